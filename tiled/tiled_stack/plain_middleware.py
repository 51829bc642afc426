"""Run Tiled's six per-request HTTP middlewares as one plain ASGI layer.

Upstream code: `build_app()` in `tiled/server/app.py` (tiled 0.2.20) registers six
functions with `@app.middleware("http")`. FastAPI wraps each in Starlette's
`BaseHTTPMiddleware`, which runs the rest of the app in a task of its own and
passes the response through a memory stream: per request, six task groups, six
streams and six wrapped responses, ≈ 1/6 of a metadata GET's CPU (py-spy,
benchmarks/README.md). Not reported upstream yet; delete this module when Tiled
writes those middlewares as plain ASGI.

The fix: those six layers are replaced, in place, by one plain ASGI layer doing
what they do, outer to inner:
  - current_principal_logging_filter: `request.state.principal = None`; the
    `current_principal` context variable (the log filter's) set at the response;
  - capture_metrics_prometheus: `metrics.capture_request_metrics()` at the response,
    or with a 500 if the app raised before answering;
  - capture_metrics: `request.state.metrics`, the "app" time up to the response,
    the Server-Timing header;
  - set_cookies: `request.state.cookies_to_set`, each set on the response;
  - client_compatibility_check and double_submit_cookie_csrf_protection: Tiled's own
    functions are called, with a placeholder for the rest of the app: if either
    answers itself (400 or 403), that answer is sent; else the cookie the CSRF check
    sets on the placeholder is copied onto the real response.
Headers are added in the order the six layers add them. Nothing is applied if the
app's middlewares are not exactly these (another Tiled): the log line says so.

Switch: PLAIN_MIDDLEWARE=off (in .env) serves with Tiled's six BaseHTTPMiddleware.
"""

import collections
import time

from tiled_stack import app_hooks, switches

SWITCH = "PLAIN_MIDDLEWARE"
# Tiled's middleware functions, outer to inner (app.user_middleware order).
REPLACED = ("current_principal_logging_filter", "capture_metrics_prometheus", "capture_metrics", "set_cookies",
            "client_compatibility_check", "double_submit_cookie_csrf_protection")


def enabled() -> bool:
    return switches.on(SWITCH)


class TiledHTTPLayers:
    """One plain ASGI layer for Tiled's six `@app.middleware("http")` functions."""

    def __init__(self, app, dispatch: dict, prometheus: bool):
        self.app, self.dispatch, self.prometheus = app, dispatch, prometheus

    @staticmethod
    async def answer_of(dispatch, request):
        """Run a request-checking middleware function with a placeholder for the rest of
        the app: (its own answer or None, the placeholder it may have set cookies on)."""
        from starlette.responses import Response

        placeholder = Response()

        async def call_next(_):
            return placeholder

        answer = await dispatch(request, call_next)
        return (None if answer is placeholder else answer), placeholder

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import MutableHeaders
        from starlette.requests import Request
        from starlette.responses import Response
        from tiled.server import app as tiled_app

        request = Request(scope, receive)
        request.state.principal = None
        metrics = collections.defaultdict(lambda: collections.defaultdict(lambda: 0))
        request.state.metrics = metrics
        request.state.cookies_to_set = []
        t0 = time.perf_counter()
        answered = False
        csrf_cookies = []

        async def send_through_layers(message):
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                headers = MutableHeaders(scope=message)
                for value in csrf_cookies:  # double_submit_cookie_csrf_protection
                    headers.append("set-cookie", value)
                for params in request.state.cookies_to_set:  # set_cookies
                    params.setdefault("httponly", True)
                    params.setdefault("samesite", "lax")
                    cookie = Response()
                    cookie.set_cookie(**params)
                    for key, value in cookie.raw_headers:
                        if key == b"set-cookie":
                            headers.append("set-cookie", value.decode("latin-1"))
                metrics["app"]["dur"] += time.perf_counter() - t0  # capture_metrics
                headers["Server-Timing"] = ", ".join(
                    f"{key};" + ";".join((f"{metric}={value * 1000:.1f}" if metric == "dur" else f"{metric}={value:.1f}")
                                         for metric, value in metrics_.items())
                    for key, metrics_ in metrics.items())
                if self.prometheus:  # capture_metrics_prometheus
                    self.capture(request, message["status"], headers)
                tiled_app.current_principal.set(request.state.principal)  # current_principal_logging_filter
            await send(message)

        try:
            early, _ = await self.answer_of(self.dispatch["client_compatibility_check"], request)
            if early is None:
                early, placeholder = await self.answer_of(self.dispatch["double_submit_cookie_csrf_protection"],
                                                          request)
                csrf_cookies = [v.decode("latin-1") for k, v in placeholder.raw_headers if k == b"set-cookie"]
            if early is not None:
                await early(scope, receive, send_through_layers)
            else:
                await self.app(scope, receive, send_through_layers)
        except Exception:
            if self.prometheus and not answered:
                self.capture(request, 500, MutableHeaders())
            raise

    @staticmethod
    def capture(request, status: int, headers) -> None:
        from types import SimpleNamespace

        from tiled.server import metrics

        metrics.capture_request_metrics(request, SimpleNamespace(status_code=status, headers=headers))


def attach(app) -> None:
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware

    stack = app.user_middleware
    at = [i for i, m in enumerate(stack) if m.cls is BaseHTTPMiddleware]
    names = tuple(stack[i].kwargs["dispatch"].__name__ for i in at)
    prometheus = "capture_metrics_prometheus" in names
    expected = REPLACED if prometheus else tuple(n for n in REPLACED if n != "capture_metrics_prometheus")
    if names != expected or at != list(range(at[0], at[0] + len(at))):
        print(f"tiled-stack: plain middleware not applied: Tiled's HTTP middlewares are {names}", flush=True)
        return
    dispatch = {stack[i].kwargs["dispatch"].__name__: stack[i].kwargs["dispatch"] for i in at}
    stack[at[0]:at[-1] + 1] = [Middleware(TiledHTTPLayers, dispatch=dispatch, prometheus=prometheus)]


def install() -> str:
    """Install the fix unless switched off; return a one-line status for the log."""
    if not enabled():
        return f"plain middleware off ({SWITCH}=off; Tiled's {len(REPLACED)} BaseHTTPMiddleware layers)"
    app_hooks.after_build(attach)
    return f"plain middleware on ({len(REPLACED)} BaseHTTPMiddleware layers → 1 ASGI layer)"
