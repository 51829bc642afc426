"""Prometheus's own key to each replica's /api/v1/metrics, and nothing else; and health
checks labelled as such in Tiled's request metrics.

Tiled serves its metrics only to a credential with the `metrics` scope. In single-user
mode the only such credential is the master API key, and in the LDAP and OIDC modes a
scoped key belongs to a principal kept in the authentication database. Prometheus
(monitoring/) needs neither: it sends TILED_METRICS_KEY, which this layer, outermost,
checks before Tiled sees the request:

- it opens `GET /api/v1/metrics` and no other path, in every authentication mode;
- only for a request made to a replica directly, on the backend network: HAProxy sets
  X-Forwarded-For on everything it forwards, and a request carrying it goes to Tiled,
  which does not know the key. A client outside cannot use the key, even if it leaked;
- a wrong key, or none, is Tiled's business too (401), so the layer reveals nothing.

The answer is what Tiled's own route answers: `generate_latest` of the process's registry.

Tiled labels each request's metrics with the route's `endpoint`, and routes that name none
`unknown`: every write (POST, PUT, PATCH, DELETE) and the health checks alike. HAProxy's
/readyz (several a second per replica) and Docker's /healthz would drown the writes in any
latency figure, so this layer names them `endpoint="health"`; dashboards and alerts leave
those out.
"""

import hmac
import os

PATH = "/api/v1/metrics"
HEALTH_PATHS = ("/readyz", "/healthz")


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class MetricsKey:
    def __init__(self, app, key: str | None):
        self.app = app
        self.expected = f"Apikey {key}".encode() if key else None

    def admits(self, scope) -> bool:
        if self.expected is None:
            return False
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] not in ("GET", "HEAD"):
            return False
        if _header(scope, b"x-forwarded-for") is not None:
            return False
        given = _header(scope, b"authorization") or b""
        return hmac.compare_digest(given, self.expected)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in HEALTH_PATHS:
            scope.setdefault("state", {})["endpoint"] = "health"  # what Tiled's metrics read
        if not self.admits(scope):
            await self.app(scope, receive, send)
            return
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        body = generate_latest(REGISTRY)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def attach(app) -> str:
    """Add the layer, outermost, to the app Tiled built; return a line for the log."""
    key = os.environ.get("TILED_METRICS_KEY") or ""
    if len(key) < 32:
        app.add_middleware(MetricsKey, key=None)
        return "health checks labelled endpoint=health; metrics key off (TILED_METRICS_KEY unset or short)"
    app.add_middleware(MetricsKey, key=key)
    return f"health checks labelled endpoint=health; metrics key on: {PATH} for Prometheus on the backend network"
