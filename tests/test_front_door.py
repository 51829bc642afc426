"""Fast tier: a request body is never read before its credentials are accepted, and never unbounded.

In-process against Tiled with an SQLite catalog, at the ASGI level, so that the test
sees exactly how much of each body the app asked for. The same requests through
HAProxy, with bodies over 1 GiB, are in tests/test_front_door_live.py.
"""

import json

from conftest import SQLITE_APP, probe_tiled_stack

PROBE = SQLITE_APP + r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tiled_stack import front_door, input_guards
input_guards.install()
status = front_door.install()
from starlette.testclient import TestClient
import tempfile
import tiled.server.app as tiled_app
def public_app():
    d = tempfile.mkdtemp()
    return tiled_app.build_app_from_config({
        "authentication": {"single_user_api_key": "k", "allow_anonymous_access": True},
        "trees": [{"path": "/", "tree": "catalog", "args": {"uri": f"sqlite:///{d}/c.db", "init_if_not_exists": True,
                                                             "writable_storage": [f"file://{d}/data"]}}]})
MiB = 1024 * 1024

async def call(app, method, path, headers, chunks, query=b""):
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
                         (b"content-type", b"application/json"), *headers],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "chunks_read": pulled["n"],
            "connection": dict(start["headers"]).get(b"connection", b"").decode(),
            "detail": json.loads(body).get("detail", "")[:80] if body.startswith(b"{") else body[:80].decode()}

endless = 10_000  # 10 GiB, were it read
out = {"status": status}
if PUBLIC:  # Tiled's settings are process-wide: one app per probe
    with TestClient(public_app()) as c:
        out["anonymous read with a body over 64 KiB, anonymous access on"] = c.portal.call(
            lambda: call(c.app, "POST", "/api/v1/container/full/", [], endless))
    print(json.dumps(out))
    sys.exit()
app = sqlite_app()
with TestClient(app, raise_server_exceptions=False) as c:
    run = lambda *a, **k: c.portal.call(lambda: call(app, *a, **k))
    out["no key"] = run("POST", "/api/v1/metadata/", [], endless)
    out["wrong key"] = run("POST", "/api/v1/metadata/", [(b"authorization", b"Apikey nope")], endless)
    out["wrong key (query)"] = run("PUT", "/api/v1/array/full/x", [], endless, query=b"api_key=nope")
    out["non-ASCII key"] = run("POST", "/api/v1/register/", [(b"authorization", "Apikey å".encode())], endless)
    out["forged token"] = run("PATCH", "/api/v1/metadata/x", [(b"authorization", b"Bearer abc.def.ghi")], endless)
    out["wrong cookie"] = run("POST", "/api/v1/metadata/", [(b"cookie", b"tiled_api_key=nope")], endless)
    out["good key, JSON over the cap"] = run("POST", "/api/v1/metadata/", [(b"authorization", b"Apikey k")], endless)
    key = {"Authorization": "Apikey k"}
    r = c.post("/api/v1/metadata/", headers=key, json={"id": "ok", "structure_family": "container", "specs": [],
                                                      "data_sources": [], "metadata": {"a": 1}})
    out["good key, small JSON"] = r.status_code
    out["no key, no body"] = c.get("/api/v1/metadata/").status_code
    out["check"] = [c.get("/_front_door/credentials", headers=h).status_code
                    for h in ({"Authorization": "Apikey k"}, {"Authorization": "Apikey nope"}, {},
                              {"Authorization": "Apikey å".encode()}, {"Cookie": "tiled_api_key=k"})]
    out["keys"] = [d["id"] for d in c.get("/api/v1/search/", headers=key).json()["data"]]
print(json.dumps(out))
"""


def test_bodies_wait_for_accepted_credentials_and_are_capped():
    out = probe_tiled_stack("PUBLIC = False\n" + PROBE)
    print(json.dumps(out, indent=1))
    assert out["status"].startswith("front door on")
    for name in ("no key", "wrong key", "wrong key (query)", "non-ASCII key", "forged token", "wrong cookie"):
        assert out[name]["status"] == 401, (name, out[name])
        assert out[name]["chunks_read"] == 0, f"{name}: the body was read before the credentials were checked"
    capped = out["good key, JSON over the cap"]
    assert capped["status"] == 413 and capped["chunks_read"] == 9, capped  # 8 MiB, then one chunk more
    assert "JSON bodies are limited to 8388608 bytes" in capped["detail"]
    assert out["good key, small JSON"] == 200
    assert out["no key, no body"] == 401
    assert out["check"] == [204, 401, 401, 401, 204], "HAProxy's credentials check (credentials.lua)"
    assert out["keys"] == ["ok"], "refused requests must change nothing"



def test_anonymous_bodies_are_capped_where_anonymous_access_is_allowed():
    out = probe_tiled_stack("PUBLIC = True\n" + PROBE)
    public = out["anonymous read with a body over 64 KiB, anonymous access on"]
    assert public["status"] == 413 and public["chunks_read"] == 1, public
    assert "bodies without credentials are limited to 65536 bytes" in public["detail"]
