"""Fast tier: patch 0019 (FastAPI analyses an overridden dependency once) is active.

FastAPI as released and as patched (the venv, as in the image) each answer the same
requests in an interpreter of their own. The probe counts the calls that reach
FastAPI's `get_dependant` per request: scores of them as released, none once the
graph is analysed.
"""

import pytest

from conftest import probe_pair

PROBE = r"""
import collections, json, os, sys, tempfile
import fastapi.dependencies.utils as u
import tiled
calls = collections.Counter()
original = u.get_dependant
def counting(**kw):
    calls["n"] += 1
    return original(**kw)
u.get_dependant = counting  # seen by solve_dependencies, patched or not
from starlette.testclient import TestClient
from tiled.catalog import from_uri
from tiled.config import Authentication
from tiled.server.app import build_app
d = tempfile.mkdtemp()
tree = from_uri(f"sqlite:///{d}/c.db", init_if_not_exists=True,
                writable_storage=[f"file://{d}/data", f"duckdb:///{d}/s.duckdb"])
app = build_app(tree, authentication=Authentication(single_user_api_key="k"))
key = {"Authorization": "Apikey k"}
out = {"tiled": tiled.__file__, "fastapi": u.__file__, "per_request": {}, "answers": []}
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


@pytest.fixture(scope="module")
def released_patched():
    return probe_pair(PROBE)


def test_the_patch_removes_per_request_dependency_analysis(released_patched):
    released, patched = released_patched
    assert "upstream" in released["fastapi"] and "upstream" not in patched["fastapi"]
    print(f"\nget_dependant calls per request, as released: {released['per_request']}; "
          f"patched: {patched['per_request']}")
    assert all(n >= 20 for n in released["per_request"].values()), released["per_request"]
    assert all(n == 0 for n in patched["per_request"].values()), patched["per_request"]


def test_the_same_answers_as_released(released_patched):
    released, patched = released_patched
    assert patched["answers"] == released["answers"]
    assert [a[0] for a in patched["answers"]] == [401, 200, 404, 200]
