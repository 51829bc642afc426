"""Fast tier: a request body is never read before its credentials are accepted, and never unbounded.

In-process against Tiled with an SQLite catalog, at the ASGI level, so that the test
sees exactly how much of each body the app asked for. The same requests through
HAProxy, with bodies over 1 GiB, are in tests/test_front_door_live.py.
"""

import json

import pytest

from conftest import SQLITE_APP, probe_tiled_stack

PROBE = SQLITE_APP + r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tiled_stack import front_door, input_guards


def layered(app):  # as tiled_stack/replica.py adds them: the guards, then the front door outermost
    input_guards.attach(app)
    global status
    status = front_door.attach(app)
    return app


from starlette.testclient import TestClient
import tempfile
import tiled.server.app as tiled_app
def public_app():
    d = tempfile.mkdtemp()
    return layered(tiled_app.build_app_from_config({
        "authentication": {"single_user_api_key": "k", "allow_anonymous_access": True},
        "trees": [{"path": "/", "tree": "catalog", "args": {"uri": f"sqlite:///{d}/c.db", "init_if_not_exists": True,
                                                             "writable_storage": [f"file://{d}/data"]}}]}))
MiB = 1024 * 1024

async def call(app, method, path, headers, chunks, query=b"", content_type=b"application/json"):
    # An endless (or long) chunked body: the test counts how many chunks the app pulled.
    pulled = {"n": 0}
    sent = []
    async def receive():
        if pulled["n"] >= chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled["n"] += 1
        return {"type": "http.request", "body": b"{" + b" " * (MiB - 1), "more_body": True}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query,
             "headers": [(b"host", b"test"), (b"transfer-encoding", b"chunked"),
                         (b"content-type", content_type), *headers],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "chunks_read": pulled["n"],
            "connection": dict(start["headers"]).get(b"connection", b"").decode(),
            "detail": json.loads(body).get("detail", "")[:80] if body.startswith(b"{") else body[:80].decode()}

endless = 10_000  # 10 GiB, were it read
out = {}
if PUBLIC:  # Tiled's settings are process-wide: one app per probe
    with TestClient(public_app()) as c:
        out["anonymous read with a body over 8 KiB, anonymous access on"] = c.portal.call(
            lambda: call(c.app, "POST", "/api/v1/container/full/", [], endless))
    print(json.dumps(out))
    sys.exit()
app = layered(sqlite_app())
out["status"] = status
with TestClient(app, raise_server_exceptions=False) as c:
    run = lambda *a, **k: c.portal.call(lambda: call(app, *a, **k))
    out["no key"] = run("POST", "/api/v1/metadata/", [], endless)
    out["wrong key"] = run("POST", "/api/v1/metadata/", [(b"authorization", b"Apikey nope")], endless)
    out["wrong key (query)"] = run("PUT", "/api/v1/array/full/x", [], endless, query=b"api_key=nope")
    out["non-ASCII key"] = run("POST", "/api/v1/register/", [(b"authorization", "Apikey å".encode())], endless)
    out["forged token"] = run("PATCH", "/api/v1/metadata/x", [(b"authorization", b"Bearer abc.def.ghi")], endless)
    out["wrong cookie"] = run("POST", "/api/v1/metadata/", [(b"cookie", b"tiled_api_key=nope")], endless)
    out["good key, JSON over the cap"] = run("POST", "/api/v1/metadata/", [(b"authorization", b"Apikey k")], endless)
    out["good key, metadata as text over the cap"] = run("PATCH", "/api/v1/metadata/ok", [
        (b"authorization", b"Apikey k")], endless, content_type=b"text/plain")
    key = {"Authorization": "Apikey k"}
    r = c.post("/api/v1/metadata/", headers=key, json={"id": "ok", "structure_family": "container", "specs": [],
                                                      "data_sources": [], "metadata": {"a": 1}})
    out["good key, small JSON"] = r.status_code
    array = {"data_type": {"endianness": "not_applicable", "kind": "u", "itemsize": 1, "dt_units": None},
             "chunks": [[20 * MiB]], "shape": [20 * MiB], "dims": None, "resizable": False}
    c.post("/api/v1/metadata/", headers=key, json={
        "id": "arr", "structure_family": "array", "specs": [], "metadata": {}, "data_sources": [{
            "structure_family": "array", "mimetype": "application/x-zarr", "parameters": {},
            "management": "writable", "assets": [], "structure": array}]}).raise_for_status()
    out["good key, array upload of 20 MiB"] = run("PUT", "/api/v1/array/full/arr", [(b"authorization", b"Apikey k")],
                                                  20, content_type=b"application/octet-stream")
    out["no key, no body"] = c.get("/api/v1/metadata/").status_code
    check = {"X-Tiled-Front-Door": "check"}
    out["check"] = [c.get("/_front_door/credentials", headers={**check, **h}).status_code
                    for h in ({"Authorization": "Apikey k"}, {"Authorization": "Apikey nope"}, {},
                              {"Authorization": "Apikey å".encode()}, {"Cookie": "tiled_api_key=k"},
                              {"X-Tiled-Front-Door-Api-Key": "k"}, {"X-Tiled-Front-Door-Api-Key": "nope"})]
    out["check, key in the URL"] = c.get("/_front_door/credentials?api_key=k", headers=check).status_code
    out["check without HAProxy's header"] = c.get("/_front_door/credentials",
                                                  headers={"Authorization": "Apikey k"}).status_code
    out["keys"] = [d["id"] for d in c.get("/api/v1/search/", headers=key).json()["data"]]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probes() -> dict:
    """The probe with and without anonymous access, at once (two interpreters)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = {public: pool.submit(probe_tiled_stack, f"PUBLIC = {public}\n" + PROBE) for public in (False, True)}
        return {public: run.result() for public, run in runs.items()}


def test_bodies_wait_for_accepted_credentials_and_are_capped(probes):
    out = probes[False]
    print(json.dumps(out, indent=1))
    assert out["status"].startswith("front door on")
    for name in ("no key", "wrong key", "wrong key (query)", "non-ASCII key", "forged token", "wrong cookie"):
        assert out[name]["status"] == 401, (name, out[name])
        assert out[name]["chunks_read"] == 0, f"{name}: the body was read before the credentials were checked"
    for name in ("good key, JSON over the cap", "good key, metadata as text over the cap"):
        capped = out[name]
        assert capped["status"] == 413 and capped["chunks_read"] == 9, (name, capped)  # 8 MiB, then one chunk more
        assert "bodies of this route are limited to 8388608 bytes" in capped["detail"]
    upload = out["good key, array upload of 20 MiB"]
    assert upload["chunks_read"] == 20 and upload["status"] == 200, upload  # data uploads go past 8 MiB
    assert out["good key, small JSON"] == 200
    assert out["no key, no body"] == 401
    assert out["check"] == [204, 401, 401, 401, 204, 204, 401], "HAProxy's credentials check (credentials.lua)"
    assert out["check, key in the URL"] == 401, "credentials.lua sends ?api_key= in a header, never in a URL"
    assert out["check without HAProxy's header"] == 404
    assert out["keys"] == ["ok", "arr"], "refused requests must change nothing"



def test_anonymous_bodies_are_capped_where_anonymous_access_is_allowed(probes):
    out = probes[True]
    public = out["anonymous read with a body over 8 KiB, anonymous access on"]
    assert public["status"] == 413 and public["chunks_read"] == 1, public
    assert "bodies without credentials are limited to 8192 bytes" in public["detail"]
