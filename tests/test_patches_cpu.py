"""Fast tier: patches 0019, 0020, 0021, 0022 and 0024 are active, and change no answer.

One probe runs twice, at once, in interpreters of their own: with Tiled as released
(.venv/upstream) and as patched (the venv, as in the image). What each patch is for
is observed, not assumed: the calls that reach FastAPI's `get_dependant` per
request (0019: about 160 as released, none once the graph is analysed), path lookups
reusing their aliases (0020), the response
model class surviving a garbage collection (0021), the count statements a search
page issues, counted with SQLAlchemy's events (0022), and a dead pooled connection
replaced at checkout (0024). Byte-identical answers through PostgreSQL are checked
live by tests/test_cpu_fixes_live.py.
"""

import pytest

from conftest import SQLITE_APP, probe_pair

PROBE = SQLITE_APP + r"""
import collections, gc, json, re, tempfile
from contextlib import closing
import fastapi.dependencies.utils as fastapi_utils
import tiled
import tiled.catalog.adapter as adapter
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from starlette.testclient import TestClient
from tiled.server import schemas
from tiled.storage import EmbeddedSQLStorage
out = {"tiled": tiled.__file__, "fastapi": fastapi_utils.__file__}
calls = collections.Counter()
get_dependant = fastapi_utils.get_dependant


def counting(**kw):
    calls["n"] += 1
    return get_dependant(**kw)


fastapi_utils.get_dependant = counting  # seen by solve_dependencies, patched or not

# 0020: a lookup reuses the aliases of the last lookup as deep (as released, it makes new
# ones, and SQLAlchemy builds every column's proxy again); the SQL is the same.
out["sql"], out["reused"] = [], []
for segments, root in [([], 0), (["a"], 0), (["bench", "big", "n00042"], 0), (list("abcdefg"), 17)]:
    first, again = adapter.node_from_segments(segments, root), adapter.node_from_segments(segments, root)
    out["reused"].append([f.entity_namespace for f in first.get_final_froms()]
                         == [f.entity_namespace for f in again.get_final_froms()])
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        compiled = first.compile(dialect=dialect)
        out["sql"].append([str(compiled), sorted(compiled.params.items())])

# 0021 and 0022 through a real search: a container of 12 containers (one with 101
# children, past exact_count_limit = 100), read as pages of 5.
app = sqlite_app()
key = {"Authorization": "Apikey k"}
node = {"structure_family": "container", "specs": [], "data_sources": [], "metadata": {}}
engine = app.state.root_tree.context.engine
statements = []
out["pages"], out["counts"] = [], []
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
    # 0019: get_dependant calls per request, after a warm-up (a fixed graph is analysed once).
    out["per_request"], out["answers"] = {}, []
    paths = ["/api/v1/metadata/p/n03", "/api/v1/search/p?page[limit]=2", "/api/v1/metadata/nope"]
    for path in paths:
        c.get(path, headers=key)
    for path, headers in [(p, key) for p in paths] + [(paths[0], {})]:
        calls.clear()
        r = c.get(path, headers=headers)
        out["per_request"][f"{path}{'' if headers else ' (no key)'}"] = calls["n"]
        out["answers"].append([r.status_code, re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+", "TIME", r.text)])
    # 0021: once the response is gone, is its model class still there?
    gc.collect()
    out["resource_classes_alive"] = sorted(
        cls.__name__ for cls in schemas.Resource.__subclasses__() if "ContainerLinks" in cls.__name__)
out["catalog_pre_ping"] = engine.pool._pre_ping

# 0024: a storage whose pooled connection dies underneath the pool (as a database
# restart leaves it) hands out a fresh one.
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
out["pool"] = {"first": ok, "after": after, "replaced": second is not first, "invalidated": invalidated}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probes():
    return probe_pair(PROBE)


def test_0019_no_dependency_analysis_per_request(probes):
    released, patched = probes
    assert "upstream" in released["fastapi"] and "upstream" not in patched["fastapi"]
    print(f"\nget_dependant calls per request, as released: {released['per_request']}; "
          f"patched: {patched['per_request']}")
    assert all(n >= 20 for n in released["per_request"].values()), released["per_request"]
    assert all(n == 0 for n in patched["per_request"].values()), patched["per_request"]
    assert patched["answers"] == released["answers"]
    assert [a[0] for a in patched["answers"]] == [200, 200, 404, 401]


def test_0020_path_lookups_reuse_their_aliases_and_build_the_same_sql(probes):
    released, patched = probes
    assert patched["sql"] == released["sql"] and len(patched["sql"]) == 8
    assert patched["reused"] == [True] * 4
    assert released["reused"] == [True, False, False, False], "as released, every lookup makes new aliases"


def test_0022_a_page_counts_its_containers_children_in_one_query(probes):
    released, patched = probes
    assert patched["pages"] == released["pages"]
    assert '"count":101' in patched["pages"][0].replace(" ", "")
    # Released: the search's own total, then one count per container on the page (5, 5, 2).
    # Patched: the total, then one for the whole page.
    print(f"\ncount statements per page of 5 containers: released {released['counts']}, "
          f"patched {patched['counts']}")
    assert released["counts"] == [6, 6, 3], released["counts"]
    assert patched["counts"] == [2, 2, 2], patched["counts"]


def test_0021_the_response_model_class_outlives_the_response(probes):
    released, patched = probes
    assert patched["resource_classes_alive"] == ["Resource[NodeAttributes, ContainerLinks, ContainerMeta]"]
    assert released["resource_classes_alive"] == [], "as released, pydantic's weak cache lets it go"


def test_0024_a_dead_pooled_connection_is_replaced_at_checkout(probes):
    released, patched = probes
    pool = patched["pool"]
    assert pool["first"] is True and pool["after"] is True and pool["replaced"] is True
    assert len(pool["invalidated"]) == 1 and "stale connection" in pool["invalidated"][0]
    assert patched["catalog_pre_ping"] is True
    # As released, the dead connection is handed out and the query fails.
    pool = released["pool"]
    assert pool["first"] is True and pool["replaced"] is False and pool["after"] is not True
    assert released["catalog_pre_ping"] is False
