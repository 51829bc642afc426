"""Refuse three kinds of bad input that tiled 0.2.20 answers with a 500 or accepts.

1. `POST /api/v1/register/…` accepts assets at any path (`file:///etc/passwd`,
   `…/detectors/../../etc/passwd`); reading such a node later fails with a 500.
   Here an asset whose resolved path is outside this replica's readable storage
   (TILED_CATALOG_READABLE_STORAGE, plus the shared array volume) gets a 400
   naming the path and the allowed roots, and nothing is registered.
2. `POST /api/v1/metadata/…` with externally-managed assets is meant to be a 400
   ("use POST /register"), but `router.py` builds its HTTPException with the
   message as the status code, so the client gets a 500. The same message is
   returned here as a 400.
3. Node names with a '/' or made only of dots ("../x", "..") are accepted by
   Tiled as keys; here they get a 400 (a path segment must be one name).
4. A NUL character, in the URL's path or query (`%00`) or in a string of a JSON
   body (`\\u0000`) of POST/PUT/PATCH /metadata, POST /register, PUT /data_source or
   POST /webhooks/target, and a lone surrogate (`\\ud800`) in such a body: PostgreSQL's
   text and jsonb cannot hold them, and Tiled passed them on to the catalog's SQL, which
   failed with a 500 (found by tests/test_fuzz_live.py). Here it is a 400 (a websocket
   with one in its URL is closed before it is accepted: 403).

An ASGI middleware: it reads the JSON body of those requests only, and replays
it unchanged to Tiled when it passes. Delete each part when upstream validates
registration paths / fixes the HTTPException / refuses NUL for PostgreSQL.
"""

import json
import os
import posixpath
import re
from urllib.parse import unquote, unquote_to_bytes, urlparse


SHARED_ARRAYS = "/data/arrays"


def allowed_roots() -> list[str]:
    readable = json.loads(os.environ.get("TILED_CATALOG_READABLE_STORAGE") or "[]")
    roots = [urlparse(r).path if "://" in r else r for r in readable] + [SHARED_ARRAYS]
    return [posixpath.normpath(r) for r in roots]


def outside(uri: str, roots: list[str]) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        return False  # object stores, databases: not paths on this host
    path = posixpath.normpath(unquote(parsed.path))
    return not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


JSON_BODIES = {"POST": ("/api/v1/register", "/api/v1/metadata", "/api/v1/webhooks/target"),
               "PUT": ("/api/v1/metadata", "/api/v1/data_source"), "PATCH": ("/api/v1/metadata",)}
NUL_IN_URL = "a NUL character (%00) in the URL: the catalog (PostgreSQL) cannot store one"
NOT_STORABLE = ("a NUL character (\\u0000) or a lone surrogate (\\ud800-\\udfff) in a string of the body: "
                "the catalog (PostgreSQL) cannot store one")
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(document) -> bool:
    """Whether any string (key or value) in a parsed JSON document has a character
    PostgreSQL cannot store. A loop, not recursion: a deeply nested body is no error."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if UNSTORABLE.search(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def problem(method: str, path: str, body: bytes, roots: list[str]) -> str | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # Tiled answers malformed (or too deeply nested) JSON with its own 4xx
    if unstorable(document):
        return NOT_STORABLE
    if not (isinstance(document, dict) and method == "POST"
            and path.startswith(("/api/v1/register", "/api/v1/metadata"))):
        return None
    key = document.get("id")
    if isinstance(key, str) and ("/" in key or "\\" in key or key.strip(".") == ""):
        return f"node name {key!r} is not allowed: no '/', '\\', or names made only of dots"
    sources = document.get("data_sources") or []
    assets = [a for s in sources if isinstance(s, dict) for a in (s.get("assets") or []) if isinstance(a, dict)]
    if path.startswith("/api/v1/metadata"):
        if assets:
            return ("Externally-managed assets cannot be registered using POST /metadata/{path}. "
                    "Use POST /register/{path} instead.")
        return None
    for asset in assets:
        uri = str(asset.get("data_uri", ""))
        if outside(uri, roots):
            return f"asset {uri} is outside this server's readable storage {roots}: nothing was registered"
    return None


async def refuse(send, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class InputGuards:
    def __init__(self, app):
        self.app = app
        self.roots = allowed_roots()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if "\x00" in path or b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await refuse(send, NUL_IN_URL)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        if not path.startswith(JSON_BODIES.get(scope["method"], ())):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        found = problem(scope["method"], path, body, self.roots)
        if found:
            return await refuse(send, found)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def attach(app) -> str:
    """Add the guards to the app Tiled built; return a line for the log."""
    app.add_middleware(InputGuards)
    return f"input guards on (registration limited to {allowed_roots()})"
