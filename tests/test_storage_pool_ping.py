"""Fast tier: Tiled's storage pool replaces a dead connection instead of handing it out.

An SQLite storage (same QueuePool as PostgreSQL's) is used once; its pooled
connection is then closed underneath the pool, as a PostgreSQL restart would
leave it. With tiled_stack.storage_pool_ping installed the next checkout gets a
fresh connection that works; without it, the dead one. The PostgreSQL restart
itself is in tests/test_resilience_live.py.
"""

from conftest import probe_tiled_stack

PROBE = r"""
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
from contextlib import closing
from sqlalchemy import event
from tiled.storage import EmbeddedSQLStorage
if sys.argv[2] == "on":
    from tiled_stack import storage_pool_ping
    status = [storage_pool_ping.install(), storage_pool_ping.install()]
else:
    status = []
storage = EmbeddedSQLStorage(f"sqlite:///{tempfile.mkdtemp()}/s.db")
returned, invalidated = [], []
event.listen(storage._connection_pool, "checkin", lambda raw, record: returned.append(raw))
event.listen(storage._connection_pool, "invalidate", lambda raw, record, err: invalidated.append(repr(err)))


def select_one():
    with closing(storage.connect()) as conn:
        raw = conn.dbapi_connection
        try:
            with closing(conn.cursor()) as cursor:
                cursor.execute("SELECT 1")
                return raw, cursor.fetchall() == [(1,)]
        except Exception as err:
            return raw, type(err).__name__

first, ok = select_one()
returned[-1].close()  # the pooled connection dies underneath the pool
second, after = select_one()
print(json.dumps({"status": status, "first": ok, "after": after, "replaced": second is not first,
                  "invalidated": invalidated}))
"""


def test_dead_storage_connection_is_replaced_at_checkout():
    out = probe_tiled_stack(PROBE.replace("sys.argv[2]", '"on"'))
    assert out["status"][0].startswith("storage pool pre-ping on")
    assert out["status"][1] == "storage pool pre-ping already on"
    assert out["first"] is True and out["after"] is True and out["replaced"] is True
    assert len(out["invalidated"]) == 1 and "stale storage connection" in out["invalidated"][0]


def test_without_it_the_dead_connection_is_handed_out():
    """The control: Tiled as released fails the query, so the test above can fail."""
    out = probe_tiled_stack(PROBE.replace("sys.argv[2]", '"off"'))
    assert out["first"] is True and out["replaced"] is False and out["after"] is not True
