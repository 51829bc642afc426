"""SQL as the PostgreSQL superuser, inside the postgres container (local socket, peer auth)."""

from scripts.lib.say import Failure


def sql(postgres, database: str, query: str) -> str:
    """Run one query with psql in the postgres container; its unaligned output."""
    code, output = postgres.exec_run(["psql", "-U", "postgres", "-d", database, "-Atc", query], user="postgres")
    if code:
        raise Failure(f"psql on {database} failed: {output.decode(errors='replace').strip()}", "check `make status`")
    return output.decode().strip()
