"""Fast tier: patches 0020, 0021, 0022 and 0024 are active, and change no answer.

Each probe runs twice, in interpreters of their own: with Tiled as released
(.venv/upstream) and as patched (the venv, as in the image). What each patch is for
is observed, not assumed: the statements' cache keys (0020), the response model class
surviving a garbage collection (0021), the count statements a search page issues,
counted with SQLAlchemy's events (0022), and a dead pooled connection replaced at
checkout (0024). Byte-identical answers through PostgreSQL are checked live by
tests/test_cpu_fixes_live.py.
"""

import pytest

from conftest import SQLITE_APP, probe_tiled_stack

# 0020: a path lookup reuses the aliases of the last lookup as deep (as released, it
# makes new ones, and SQLAlchemy builds every column's proxy again); the SQL is the same.
ALIASES = r"""
import json
import tiled
import tiled.catalog.adapter as adapter
from sqlalchemy.dialects import postgresql, sqlite
out = {"tiled": tiled.__file__, "sql": [], "reused": []}
for segments, root in [([], 0), (["a"], 0), (["bench", "big", "n00042"], 0), (list("abcdefg"), 17)]:
    first, again = adapter.node_from_segments(segments, root), adapter.node_from_segments(segments, root)
    out["reused"].append([f.entity_namespace for f in first.get_final_froms()]
                         == [f.entity_namespace for f in again.get_final_froms()])
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        compiled = first.compile(dialect=dialect)
        out["sql"].append([str(compiled), sorted(compiled.params.items())])
print(json.dumps(out))
"""


def test_0020_path_lookups_reuse_their_aliases_and_build_the_same_sql():
    released, patched = probe_tiled_stack(ALIASES, upstream=True), probe_tiled_stack(ALIASES)
    assert patched["sql"] == released["sql"] and len(patched["sql"]) == 8
    assert patched["reused"] == [True] * 4
    assert released["reused"] == [True, False, False, False], "as released, every lookup makes new aliases"


# 0021 and 0022 through a real search: a container of 12 containers (one with 101
# children, past exact_count_limit = 100), read as pages of 5.
SEARCH = SQLITE_APP + r"""
import gc, json, re
import tiled
from sqlalchemy import event
from starlette.testclient import TestClient
from tiled.server import schemas
app = sqlite_app()
key = {"Authorization": "Apikey k"}
node = {"structure_family": "container", "specs": [], "data_sources": [], "metadata": {}}
engine = app.state.root_tree.context.engine
statements = []
out = {"tiled": tiled.__file__, "pages": [], "counts": []}
with TestClient(app) as c:
    c.post("/api/v1/metadata/", headers=key, json={**node, "id": "p"})
    for i in range(12):
        c.post("/api/v1/metadata/p", headers=key, json={**node, "id": f"n{i:02d}"})
    for i in range(101):
        c.post("/api/v1/metadata/p/n01", headers=key, json={**node, "id": f"c{i:03d}"})
    for i in range(3):
        c.post("/api/v1/metadata/p/n02", headers=key, json={**node, "id": f"c{i}"})
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql))
    for offset in (0, 5, 10):
        statements.clear()
        r = c.get(f"/api/v1/search/p?page[offset]={offset}&page[limit]=5", headers=key)
        out["pages"].append(re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+", "TIME", r.text))
        out["counts"].append(sum("count(" in s.lower() for s in statements))
    # 0021: once the response is gone, is its model class still there?
    gc.collect()
    out["resource_classes_alive"] = sorted(
        cls.__name__ for cls in schemas.Resource.__subclasses__() if "ContainerLinks" in cls.__name__)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def searches():
    return probe_tiled_stack(SEARCH, upstream=True), probe_tiled_stack(SEARCH)


def test_0022_a_page_counts_its_containers_children_in_one_query(searches):
    released, patched = searches
    assert patched["pages"] == released["pages"]
    assert '"count":101' in patched["pages"][0].replace(" ", "") or '"count":100' in patched["pages"][0]
    # Released: the search's own total, then one count per container on the page (5, 5, 2).
    # Patched: the total, then one for the whole page.
    print(f"\ncount statements per page of 5 containers: released {released['counts']}, "
          f"patched {patched['counts']}")
    assert released["counts"] == [6, 6, 3], released["counts"]
    assert patched["counts"] == [2, 2, 2], patched["counts"]


def test_0021_the_response_model_class_outlives_the_response(searches):
    released, patched = searches
    assert patched["resource_classes_alive"] == ["Resource[NodeAttributes, ContainerLinks, ContainerMeta]"]
    assert released["resource_classes_alive"] == [], "as released, pydantic's weak cache lets it go"


# 0024: a storage whose pooled connection dies underneath the pool (as a database
# restart leaves it) hands out a fresh one; the catalog engine pre-pings.
POOL = SQLITE_APP + r"""
import json, tempfile
from contextlib import closing
import tiled
from sqlalchemy import event
from tiled.storage import EmbeddedSQLStorage
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
catalog = sqlite_app().state.root_tree.context.engine
print(json.dumps({"tiled": tiled.__file__, "first": ok, "after": after, "replaced": second is not first,
                  "invalidated": invalidated, "catalog_pre_ping": catalog.pool._pre_ping}))
"""


def test_0024_a_dead_pooled_connection_is_replaced_at_checkout():
    released, patched = probe_tiled_stack(POOL, upstream=True), probe_tiled_stack(POOL)
    assert patched["first"] is True and patched["after"] is True and patched["replaced"] is True
    assert len(patched["invalidated"]) == 1 and "stale connection" in patched["invalidated"][0]
    assert patched["catalog_pre_ping"] is True
    # As released, the dead connection is handed out and the query fails.
    assert released["first"] is True and released["replaced"] is False and released["after"] is not True
    assert released["catalog_pre_ping"] is False
