"""Fast tier: the dependant-cache fix takes effect on the pinned FastAPI and Tiled.

Each mode runs in its own interpreter (the fix patches FastAPI process-wide).
It counts the calls that reach FastAPI's `get_dependant` while Tiled answers
the same requests: hundreds per request unfixed, none once the graph is cached.
"""

import subprocess
import sys

import pytest

from conftest import ROOT, probe_tiled_stack

PROBE = r"""
import collections, json, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
import fastapi.dependencies.utils as u
calls = collections.Counter()
original = u.get_dependant
def counting(**kw):
    calls["n"] += 1
    return original(**kw)
u.get_dependant = counting  # seen by solve_dependencies, fixed or not
from tiled_stack import dependant_cache
status = dependant_cache.install()
from starlette.testclient import TestClient
from tiled.catalog import from_uri
from tiled.config import Authentication
from tiled.server.app import build_app
d = tempfile.mkdtemp()
tree = from_uri(f"sqlite:///{d}/c.db", init_if_not_exists=True,
                writable_storage=[f"file://{d}/data", f"duckdb:///{d}/s.duckdb"])
app = build_app(tree, authentication=Authentication(single_user_api_key="k"))
key = {"Authorization": "Apikey k"}
out = {"status": status, "per_request": {}, "answers": []}
with TestClient(app) as c:
    c.post("/api/v1/metadata/", headers=key, json={"metadata": {"a": 1}, "structure_family": "container",
                                                     "specs": [], "data_sources": [], "id": "x"})
    paths = ["/api/v1/metadata/x", "/api/v1/search/?page[limit]=2", "/api/v1/metadata/nope"]
    for p in paths:
        c.get(p, headers=key)  # warm-up: a fixed graph is analysed once
    for p in paths + ["/api/v1/metadata/x"]:
        calls.clear()
        r = c.get(p, headers=key if p != paths[0] or out["answers"] else {})
        out["per_request"][p] = calls["n"]
        out["answers"].append([r.status_code, r.text])
print(json.dumps(out))
"""


def probe(mode: str) -> dict:
    return probe_tiled_stack(PROBE, {"FASTAPI_DEPENDANT_CACHE": mode})


@pytest.fixture(scope="module")
def on_off():
    return probe("on"), probe("off")


def test_the_fix_removes_per_request_dependency_analysis(on_off):
    on, off = on_off
    assert on["status"].startswith("dependant cache on (fastapi ")
    assert off["status"].startswith("dependant cache off")
    print(f"\nget_dependant calls per request, fix off: {off['per_request']}; fix on: {on['per_request']}")
    assert all(n >= 20 for n in off["per_request"].values()), off["per_request"]
    assert all(n == 0 for n in on["per_request"].values()), on["per_request"]


def test_the_same_answers_with_the_fix_on_and_off(on_off):
    on, off = on_off
    assert on["answers"] == off["answers"]
    assert [a[0] for a in on["answers"]] == [401, 200, 404, 200]


def test_a_bad_switch_value_is_refused():
    done = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                           "from tiled_stack import dependant_cache as d; d.install()", str(ROOT / "tiled")],
                          capture_output=True, text=True, env={"FASTAPI_DEPENDANT_CACHE": "maybe"})
    assert done.returncode != 0
    assert "FASTAPI_DEPENDANT_CACHE='maybe': use on or off" in done.stderr
