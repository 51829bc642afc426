"""Fast tier: patch 0023 (Tiled's six HTTP middlewares as one plain ASGI layer) is active
and answers exactly as the six do.

The same app configuration runs with the whole series but 0023 (`apply.py --without`)
and with the whole series (the venv, as in the image), each in an interpreter of its own; the same requests go to both.
Status, body and every header must be equal in value and order, except the random CSRF
token, Server-Timing's durations, the request id, dates and nodes' creation times. The
patched app must run no BaseHTTPMiddleware at all: their dispatches are counted per
request (six as released). Covered: the CSRF check
(no token, wrong token, right token), the client version check, a cookie set by a
dependency (`?api_key=`), an error raised in a route, the Prometheus counts each
request adds, and the principal the access log sees when the response starts.
"""

from conftest import SQLITE_APP, probe_pair

PROBE = SQLITE_APP + r"""
import json, re
from prometheus_client import REGISTRY
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.testclient import TestClient
import tiled
import tiled.server.app as tiled_app
from tiled.utils import UNSET

dispatched = []
original_dispatch = BaseHTTPMiddleware.__call__


async def counted(self, scope, receive, send):
    dispatched.append(self.dispatch_func.__name__)
    return await original_dispatch(self, scope, receive, send)


BaseHTTPMiddleware.__call__ = counted  # counts the layers a request goes through


def build():
    app = sqlite_app()

    async def boom():
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    seen = []

    def outermost(inner):  # where uvicorn writes its access log line: at the response start
        async def asgi(scope, receive, send):
            async def send_and_look(message):
                if message["type"] == "http.response.start":
                    principal = tiled_app.current_principal.get(UNSET)
                    seen.append(repr(principal))
                await send(message)
            await inner(scope, receive, send_and_look)
        return asgi

    return app, outermost, seen


def count(code, endpoint):
    return sum(s.value for m in REGISTRY.collect() if m.name == "tiled_request_duration_seconds"
               for s in m.samples if s.name.endswith("_count") and s.labels.get("code") == code)


def masked(headers):
    out = []
    for k, v in headers:
        if k == "set-cookie" and v.startswith("tiled_csrf="):
            v = re.sub(r"=[^;]*", "=TOKEN", v, count=1)
        elif k == "server-timing":
            v = re.sub(r"dur=[0-9.]+", "dur=T", v)
        elif k in ("x-tiled-request-id", "expires", "date"):
            v = "VARIES"
        out.append([k, v])
    return out


KEY = {"Authorization": "Apikey k"}
NODE = {"structure_family": "container", "specs": [], "data_sources": [], "metadata": {"a": 1}}
REQUESTS = [
    ("GET", "/healthz", {}),
    ("GET", "/api/v1/", {}),
    ("GET", "/api/v1/metadata/", {"headers": KEY}),
    ("POST", "/api/v1/metadata/", {"headers": KEY, "json": {**NODE, "id": "x"}}),
    ("GET", "/api/v1/metadata/x", {"headers": KEY}),
    ("GET", "/api/v1/search/?page[limit]=1", {"headers": KEY}),
    ("GET", "/api/v1/metadata/x?api_key=k", {}),
    ("GET", "/api/v1/metadata/nope", {"headers": KEY}),
    ("GET", "/api/v1/metadata/x", {}),
    ("GET", "/api/v1/metadata/x", {"headers": {"Authorization": "Apikey wrong"}}),
    ("GET", "/api/v1/metadata/x", {"headers": {**KEY, "User-Agent": "python-tiled/0.1.0a50"}}),
    ("GET", "/api/v1/metadata/x", {"headers": {**KEY, "User-Agent": "python-tiled/not-a-version"}}),
    ("POST", "/api/v1/metadata/", {"cookies": {"tiled_api_key": "k"}, "json": {**NODE, "id": "y"}}),
    ("POST", "/api/v1/metadata/", {"cookies": {"tiled_api_key": "k", "tiled_csrf": "abc"},
                                   "json": {**NODE, "id": "y"}}),
    ("POST", "/api/v1/metadata/", {"cookies": {"tiled_api_key": "k", "tiled_csrf": "abc"},
                                   "headers": {"x-csrf": "xyz"}, "json": {**NODE, "id": "y"}}),
    ("POST", "/api/v1/metadata/", {"cookies": {"tiled_api_key": "k", "tiled_csrf": "abc"},
                                   "headers": {"x-csrf": "abc"}, "json": {**NODE, "id": "y"}}),
    ("GET", "/api/v1/metadata/y", {"cookies": {"tiled_csrf": "abc"}, "headers": KEY}),
    ("GET", "/boom", {}),
]
app, outermost, seen = build()
names = [m.kwargs["dispatch"].__name__ for m in app.user_middleware if m.cls is BaseHTTPMiddleware]
rows, layers = [], []
with TestClient(app, raise_server_exceptions=False) as client:
    app.middleware_stack = outermost(app.build_middleware_stack())
    for method, path, kwargs in REQUESTS:
        client.cookies.clear()
        dispatched.clear()
        before = {c: count(c, None) for c in ("200", "400", "403", "500")}
        r = client.request(method, path, **kwargs)
        added = {c: count(c, None) - n for c, n in before.items() if count(c, None) != n}
        body = re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+", "TIME", r.text)  # nodes' creation times
        rows.append([method, path, r.status_code, body, masked(r.headers.multi_items()), added])
        layers.append(len(dispatched))
answers = {"tiled": tiled.__file__, "middlewares": names, "rows": rows, "principals": seen, "layers": layers,
           "plain": [m.cls.__name__ for m in app.user_middleware]}
print(json.dumps(answers))
"""


def test_one_plain_layer_answers_like_tiled_s_six(site_without):
    upstream, plain = probe_pair(PROBE, released=site_without("0023-http-middleware-as-one-asgi-layer.patch"))
    assert len(upstream["middlewares"]) == 6 and plain["middlewares"] == []
    assert "TiledHTTPLayers" in plain["plain"] and "TiledHTTPLayers" not in upstream["plain"]
    # The old layers do not run: no request goes through a BaseHTTPMiddleware (six without 0023,
    # fewer only for a request one of them answers itself).
    assert plain["layers"] == [0] * 18, plain["layers"]
    assert max(upstream["layers"]) == 6, upstream["layers"]
    assert len(plain["rows"]) == len(upstream["rows"]) == 18
    for ours, theirs in zip(plain["rows"], upstream["rows"]):
        assert ours == theirs
    assert {"500": 1.0} in [row[5] for row in upstream["rows"]], "the Prometheus counts were not observed"
    statuses = [row[2] for row in upstream["rows"]]
    assert {200, 400, 401, 403, 404, 500} <= set(statuses), statuses  # each path above was taken
    cookies = [[v for k, v in row[4] if k == "set-cookie"] for row in upstream["rows"]]
    assert any(v.startswith("tiled_api_key=k") for c in cookies for v in c)  # set by a dependency
    assert plain["principals"] == upstream["principals"] and "SingleUserPrincipal" in "".join(upstream["principals"])
