"""Pre-ping Tiled's storage pool, so that a PostgreSQL restart costs table reads nothing.

Tiled keeps its tabular-storage connections (ADBC, `tiled_storage`) in a plain
`sqlalchemy.pool.QueuePool` with no pre-ping (tiled/storage.py,
`SQLStorage._connection_pool`). After PostgreSQL restarts, each pooled
connection is dead and fails one table read with a 500. The catalog pool has
the same flaw and readiness.py turns its pre-ping on; this does the same for
every storage pool, through SQLAlchemy's documented recipe: a checkout listener
that runs `SELECT 1` and raises `InvalidatePoolError` if it fails, so the pool
drops every connection older than the failure and hands out a fresh one.

Wraps the `_connection_pool` cached property, so pools that Tiled rebuilds
after `SQLStorage.dispose()` get the listener too. Costs one round trip per
table read or write. Delete when Tiled pre-pings its storage pool itself.
"""

import functools
from contextlib import closing

from sqlalchemy import event, exc, pool as sa_pool


def ping(dbapi_connection, connection_record, connection_proxy) -> None:
    try:
        with closing(dbapi_connection.cursor()) as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
    except Exception as err:  # whatever the driver raises, the connection is unusable
        raise exc.InvalidatePoolError(f"stale storage connection ({type(err).__name__}: {err})") from err


def install() -> str:
    from tiled.storage import SQLStorage

    original = SQLStorage.__dict__["_connection_pool"]
    if getattr(original.func, "pings", False):
        return "storage pool pre-ping already on"

    def pinging_pool(self):
        pool = original.func(self)
        if isinstance(pool, sa_pool.QueuePool):  # not DuckDB's or in-memory SQLite's StaticPool
            event.listen(pool, "checkout", ping)
        return pool

    pinging_pool.pings = True
    replacement = functools.cached_property(pinging_pool)
    replacement.__set_name__(SQLStorage, "_connection_pool")
    SQLStorage._connection_pool = replacement
    return "storage pool pre-ping on (stale connections after a PostgreSQL restart are replaced)"
