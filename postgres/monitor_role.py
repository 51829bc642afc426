"""Create or update role tiled_monitor, PostgreSQL's exporter login: a member of pg_monitor,
nothing else. Run once per `make up` with monitoring on (compose.yaml: postgres-monitor-role).

The role cannot connect to tiled_catalog, tiled_storage or tiled_authn (postgres/entrypoint.py
revokes CONNECT from PUBLIC on each); it reads the statistics views of database `postgres`.
Its password (MONITORING_DB_PASSWORD) is sent as a SCRAM verifier, so the plain password
never reaches the server, a statement log or pg_stat_activity. Only this job and PostgreSQL
hold the superuser password. The image's python3-minimal has no hmac module: HMAC is written out.
"""

import binascii
import hashlib
import os
import subprocess
import sys

ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    key = key.ljust(64, b"\0")  # 32-byte keys only: shorter than SHA-256's block
    inner = hashlib.sha256(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha256(bytes(k ^ 0x5C for k in key) + inner).digest()


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def scram_verifier(password: str, salt: bytes) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5803)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    stored_key = hashlib.sha256(hmac_sha256(salted, b"Client Key")).digest()
    server_key = hmac_sha256(salted, b"Server Key")
    return f"SCRAM-SHA-256${ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def main() -> None:
    for name in ("POSTGRES_PASSWORD", "MONITORING_DB_PASSWORD"):
        if not os.environ.get(name):
            sys.exit(f"postgres-monitor-role: {name} is empty; `make up` generates it in .env")
    verifier = scram_verifier(os.environ["MONITORING_DB_PASSWORD"], os.urandom(16))
    sql = ("SELECT 'CREATE ROLE tiled_monitor' WHERE NOT EXISTS "
           "(SELECT FROM pg_roles WHERE rolname = 'tiled_monitor') \\gexec\n"
           f"ALTER ROLE tiled_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT CONNECTION LIMIT 3 "
           f"PASSWORD '{verifier}';\n"
           "ALTER ROLE tiled_monitor SET default_transaction_read_only = on;\n"
           "GRANT pg_monitor TO tiled_monitor;\n")
    env = {**os.environ, "PGPASSWORD": os.environ["POSTGRES_PASSWORD"], "PGCONNECT_TIMEOUT": "10"}
    done = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "--host=postgres", "--username=postgres",
                           "--dbname=postgres"], input=sql, text=True, env=env)
    if done.returncode:
        sys.exit(f"postgres-monitor-role: psql failed (exit {done.returncode}, output above); "
                 "check `make logs SERVICE=postgres`, then `make up` again")
    print("postgres-monitor-role: role tiled_monitor is a member of pg_monitor, with the password in .env")


if __name__ == "__main__":
    main()
