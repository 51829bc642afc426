"""Fast tier: two of our layers (tiled/tiled_stack), added to Tiled's app as replica.py adds them.

/readyz is served ahead of Tiled's own routes (its failure path, PostgreSQL gone → 503 → out
of HAProxy's rotation, is in tests/test_resilience_live.py). The input guards: registration
outside readable storage, assets in POST /metadata and NUL characters (which PostgreSQL
cannot store) get a 400; the same requests through HAProxy are in tests/test_bad_input_live.py.
In-process against Tiled with an SQLite catalog, one interpreter for both.
"""

import pytest

from conftest import SQLITE_APP, probe_tiled_stack

PROBE = SQLITE_APP + r"""
import json, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
d = tempfile.mkdtemp()
os.makedirs(f"{d}/detectors")
os.environ["TILED_CATALOG_READABLE_STORAGE"] = json.dumps([f"{d}/detectors"])
from tiled_stack import input_guards, readiness
from starlette.testclient import TestClient
app = sqlite_app(d, readable_storage=[f"{d}/detectors"])
ready_status = readiness.attach(app)
status = input_guards.attach(app)
def node(key, uri):
    return {"id": key, "structure_family": "array", "specs": [], "metadata": {}, "data_sources": [{
        "structure_family": "array", "mimetype": "image/tiff", "parameters": {}, "management": "external",
        "structure": {"data_type": {"endianness": "little", "kind": "u", "itemsize": 2, "dt_units": None},
                      "chunks": [[4], [4]], "shape": [4, 4], "dims": None, "resizable": False},
        "assets": [{"data_uri": uri, "is_directory": False, "parameter": "data_uris", "num": 0}]}]}
key = {"Authorization": "Apikey k"}
out = {"status": status, "ready_status": ready_status}
with TestClient(app, raise_server_exceptions=False) as c:
    ready = c.get("/readyz")
    out["ready"] = [ready.status_code, ready.json(), c.head("/readyz").status_code, c.get("/healthz").status_code]
    for name, uri in [("etc", "file://localhost/etc/passwd"),
                      ("traversal", f"file://localhost{d}/detectors/../../../etc/passwd"),
                      ("inside", f"file://localhost{d}/detectors/a.tiff")]:
        r = c.post("/api/v1/register/", headers=key, json=node(name, uri))
        out[name] = [r.status_code, r.json().get("detail", "")[:200] if r.status_code != 200 else ""]
    r = c.post("/api/v1/metadata/", headers=key, json=node("meta", f"file://localhost{d}/detectors/a.tiff"))
    out["metadata_assets"] = [r.status_code, r.json()["detail"][:40]]
    r = c.post("/api/v1/metadata/", headers=key, json={"id": "plain", "structure_family": "container", "specs": [],
                                                      "data_sources": [], "metadata": {"a": 1}})
    out["plain"] = r.status_code
    out["names"] = [c.post("/api/v1/metadata/", headers=key, json={"id": bad, "structure_family": "container",
                                                                   "specs": [], "data_sources": [], "metadata": {}}
                           ).status_code for bad in ["../x", "a/b", "..", "."]]
    out["keys"] = sorted(c.get("/api/v1/search/", headers=key).json()["data"][i]["id"] for i in range(2))

    def merge(metadata):
        return {"content-type": "application/merge-patch+json", "specs": None, "metadata": metadata}
    nul = {"id": "nul", "structure_family": "container", "specs": [], "data_sources": [], "metadata": {"a\x00": 1}}
    out["nul"] = [c.get("/api/v1/metadata/a%00b", headers=key).status_code,
                  c.get("/api/v1/search/?filter[fulltext][condition][text]=%00", headers=key).status_code,
                  c.post("/api/v1/metadata/", headers=key, json=nul).status_code,
                  c.patch("/api/v1/metadata/plain", headers=key, json=merge({"b": "x\x00"})).status_code,
                  c.patch("/api/v1/metadata/plain", headers={**key, "Content-Type": "application/json"},
                          content=b'{"content-type": "application/merge-patch+json", "specs": null, "metadata": {"\\ud800": 1}}'
                          ).status_code,
                  c.post("/api/v1/metadata/", headers=key, content=b"[" * 3000 + b"]" * 3000,
                         ).status_code < 500]
    out["nul_detail"] = c.get("/api/v1/metadata/a%00b", headers=key).json()["detail"]
    out["plain_after_refused"] = c.get("/api/v1/metadata/plain", headers=key).json()["data"]["attributes"]["metadata"]
    out["patch_ok"] = c.patch("/api/v1/metadata/plain", headers=key, json=merge({"c": 2})).status_code
    out["plain_after"] = c.get("/api/v1/metadata/plain", headers=key).json()["data"]["attributes"]["metadata"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def out() -> dict:
    return probe_tiled_stack(PROBE)


def test_readyz_answers_from_the_catalog(out):
    assert out["ready_status"].startswith("readiness at /readyz")
    assert out["ready"] == [200, {"ready": True}, 200, 200]


def test_bad_registrations_are_refused_and_good_input_passes(out):
    assert out["status"].startswith("input guards on")
    for name in ("etc", "traversal"):
        assert out[name][0] == 400 and "outside this server's readable storage" in out[name][1], out[name]
    assert out["inside"] == [200, ""]
    assert out["metadata_assets"] == [400, "Externally-managed assets cannot be regi"]
    assert out["plain"] == 200
    assert out["names"] == [400, 400, 400, 400]
    assert out["keys"] == ["inside", "plain"], "a refused request must change nothing"
    assert out["nul"] == [400, 400, 400, 400, 400, True] and "NUL" in out["nul_detail"], out
    # The refused PATCHes changed nothing; the same PATCH without a NUL is accepted.
    assert out["plain_after_refused"] == {"a": 1}, out
    assert out["patch_ok"] == 200 and out["plain_after"] == {"a": 1, "c": 2}, out
