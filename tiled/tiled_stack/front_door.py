"""A request's credentials are checked before one byte of its body is read, and no body is unbounded.

Tiled 0.2.20 (FastAPI) reads and parses a request's body *before* it checks the
credentials, on every route whose body is a FastAPI parameter (`POST /metadata`,
`POST /register`, `PATCH /metadata`, …): one anonymous 830 MiB chunked POST got a
replica OOM-killed. Here, as the outermost ASGI layer:

0. `GET /_front_door/credentials` answers 204 if the request's credentials would be
   accepted, else 401, from the head alone. HAProxy asks it before it lets a body or a
   websocket through (haproxy/credentials.lua), so a body with bad credentials never
   reaches a replica. Only HAProxy's check backend sets CHECK_HEADER (its public frontend
   strips it); without it the route is Tiled's (a 404).
1. A request that carries a body (any method, `Content-Length` > 0 or
   `Transfer-Encoding`) must carry a credential Tiled accepts: the single-user API key,
   an API key of the authentication database, or an access token Tiled signed. The
   check uses Tiled's own functions and settings and reads only the request's head.
   Missing or invalid: 401 at once, before the app asks for the body. (uvicorn then
   discards whatever of the body still arrives; closing instead would make the kernel
   reset the connection and lose the 401. Through HAProxy, step 0 has refused such a
   request already.)
   Exceptions: the login and token routes (`/api/v1/auth/…`), and every route when the
   server allows anonymous access; their bodies are capped at ANONYMOUS_BODY_BYTES.
2. Every body is counted as it streams in, never buffered here. Past its cap it gets a
   413 and the app sees the client leave: ANONYMOUS_BODY_BYTES without a credential;
   HAPROXY_MAX_BODY_BYTES (the limit HAProxy applies to declared lengths, which chunked
   uploads would otherwise escape) for the raw data uploads, PUT and PATCH of arrays,
   tables, ragged and awkward arrays and nodes; JSON_BODY_BYTES for every other body:
   FastAPI reads those whole, whatever their content type, and holds a parsed JSON body
   in memory several times over (so does input_guards.py, for POST /metadata and
   /register). Both limits come from compose.yaml
   (x-body-limits), the same values HAProxy uses.

A non-ASCII API key is an invalid key here (Tiled's `secrets.compare_digest` raises
TypeError on it, a 500). Delete this module when Tiled authenticates before it reads
a body and limits bodies itself.
"""

import hmac
import json
import os


CHECK_ROUTE = "/_front_door/credentials"
CHECK_HEADER = b"x-tiled-front-door"
CHECK_KEY_HEADER = "x-tiled-front-door-api-key"
RAW_UPLOADS = ("/api/v1/array/", "/api/v1/table/", "/api/v1/ragged/", "/api/v1/awkward/", "/api/v1/node/")
AUTH_ROUTES = "/api/v1/auth/"
ANONYMOUS_BODY_BYTES = int(os.environ.get("ANONYMOUS_BODY_BYTES") or 8192)
JSON_BODY_BYTES = 8 * 1024 * 1024


def max_body_bytes() -> int:
    return int(os.environ.get("HAPROXY_MAX_BODY_BYTES") or 999_999_999)


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def has_body(scope) -> bool:
    if header(scope, b"transfer-encoding") is not None:
        return True
    length = header(scope, b"content-length")
    return length is not None and length.strip() not in ("", "0")


def credentials(scope, checking: bool = False) -> tuple[str | None, str | None]:
    """(API key, access token) as Tiled reads them: ?api_key=, `Apikey …`/`Bearer …`, cookie.

    `checking`: HAProxy's credentials check, which sends ?api_key= in CHECK_KEY_HEADER
    (a header is not logged, a URL is)."""
    from starlette.requests import Request
    from tiled.server.utils import API_KEY_COOKIE_NAME

    request = Request(scope)
    api_key = request.headers.get(CHECK_KEY_HEADER) if checking else request.query_params.get("api_key")
    token = None
    scheme, _, param = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        token = param.strip() or None
    elif scheme.lower() == "apikey" and api_key is None:
        api_key = param.strip()
    if api_key is None:
        api_key = request.cookies.get(API_KEY_COOKIE_NAME)
    return api_key, token


async def accepted(app, api_key: str | None, token: str | None) -> bool:
    """Would Tiled accept these credentials? Tiled's own checks, before any body is read."""
    from tiled.server.authentication import decode_token, get_current_principal_from_api_key
    from tiled.server.connection_pool import get_database_engine
    from tiled.server.settings import get_settings

    settings = app.dependency_overrides.get(get_settings, get_settings)()
    if api_key is not None:
        if not api_key.isascii():
            return False
        if not app.state.authenticated:
            expected = settings.single_user_api_key or ""
            return bool(expected) and hmac.compare_digest(api_key.encode(), expected.encode())
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(get_database_engine(settings), autoflush=False, expire_on_commit=False) as db:
            return await get_current_principal_from_api_key(api_key, True, db, settings) is not None
    if token is not None:
        try:
            decode_token(token, settings.secret_keys, settings.authenticator)
        except Exception:  # expired, forged, or not a token at all
            return False
        return True
    return False


def anonymous_allowed(app) -> bool:
    from tiled.server.settings import get_settings

    return bool(app.dependency_overrides.get(get_settings, get_settings)().allow_anonymous_access)


async def answer(send, status: int, detail: str, *extra: tuple[bytes, bytes]) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *extra]})
    await send({"type": "http.response.body", "body": payload})


class FrontDoor:
    def __init__(self, app):
        self.app = app
        self.max_body = max_body_bytes()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == CHECK_ROUTE and header(scope, CHECK_HEADER) is not None:
            good = await accepted(scope["app"], *credentials(scope, checking=True))
            await send({"type": "http.response.start", "status": 204 if good else 401, "headers": []})
            return await send({"type": "http.response.body", "body": b""})
        if scope["type"] != "http" or not has_body(scope):
            return await self.app(scope, receive, send)
        app = scope["app"]
        api_key, token = credentials(scope)
        if api_key is not None or token is not None:
            if not await accepted(app, api_key, token):
                return await answer(send, 401, "Invalid API key or access token: the request body was not read",
                                    (b"www-authenticate", b"Bearer"))
            if scope["method"] in ("PUT", "PATCH") and scope["path"].startswith(RAW_UPLOADS):
                cap, kind = self.max_body, "data uploads"
            else:
                cap, kind = min(self.max_body, JSON_BODY_BYTES), "bodies of this route"
        elif scope["path"].startswith(AUTH_ROUTES) or anonymous_allowed(app):
            cap, kind = ANONYMOUS_BODY_BYTES, "bodies without credentials"
        else:
            return await answer(send, 401, "Not authenticated: send an API key or access token with a request body",
                                (b"www-authenticate", b"Bearer"))
        return await self.app(scope, *capped(receive, send, cap, kind))


def capped(receive, send, cap: int, kind: str):
    """(receive, send) for the app: the body is counted as it arrives; past `cap`, a 413."""
    state = {"received": 0, "started": False, "refused": False}

    async def capped_receive():
        if state["refused"]:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            state["received"] += len(message.get("body", b""))
            if state["received"] > cap:
                state["refused"] = True
                if not state["started"]:
                    state["started"] = True
                    await answer(send, 413, f"{kind} are limited to {cap} bytes here")
                return {"type": "http.disconnect"}
        return message

    async def guarded_send(message):
        if state["refused"]:
            return  # the 413 is the answer; the app's own is dropped
        if message["type"] == "http.response.start":
            state["started"] = True
        await send(message)

    return capped_receive, guarded_send


def attach(app) -> str:
    """Add the front door, outermost, to the app Tiled built; return a line for the log."""
    app.add_middleware(FrontDoor)
    return (f"front door on: bodies need credentials first; caps {ANONYMOUS_BODY_BYTES} B anonymous, "
            f"{JSON_BODY_BYTES} B JSON, {max_body_bytes()} B other")
