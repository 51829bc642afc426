"""Schemathesis hooks for tests/test_fuzz_live.py, loaded with SCHEMATHESIS_HOOKS=fuzz_hooks.

Every generated `{path}` is sent inside the test's own sandbox container, so that
nothing the fuzzer writes or deletes can touch data it did not make:
- two calls in three name a real node of the sandbox, of the kind the route serves
  (an array for /array/…, a table for /table/…), so query parameters reach the code
  that reads data, not only a 404; the third sends the generated path under the sandbox;
- a DELETE of a node names a victim made for the purpose: every DELETE /metadata an empty
  container (which any valid DELETE removes), every other DELETE /asset, /revisions or
  /stream/close an array, the rest the generated path under the sandbox's `decoy`
  container, so that even a path that decodes to nothing names no node other calls use.
Which one a call gets is derived from the case itself (method, route, generated values),
so a failing case's `curl` line replays the same request. Schemathesis percent-encodes
the generated value; `..` and `/` in it stay inside one segment.
Each answer is logged (operation, status, body size, clean) to FUZZ_LOG.

With FUZZ_API_KEY set, every request carries that key, and the credentials the generator
made (an `api_key` query parameter, a `tiled_api_key` cookie, an Authorization header) are
dropped: they would take precedence and get 401 (or a cookie's CSRF check, 403) before the
route ever read its input. Without it, the generated credentials are sent as they are.

Environment: FUZZ_SANDBOX (the sandbox's path), FUZZ_NODES (JSON: kind → node path;
"victims" → list of paths), FUZZ_LOG (an NDJSON file to append to), FUZZ_API_KEY.
"""

import json
import os
import re
import zlib

import schemathesis

SANDBOX = os.environ["FUZZ_SANDBOX"]
NODES = json.loads(os.environ["FUZZ_NODES"])
API_KEY = os.environ.get("FUZZ_API_KEY")
LOG = open(os.environ["FUZZ_LOG"], "a", buffering=1)  # noqa: SIM115 (open for the run)

# Route family (the segment after /api/v1/) → the kind of sandbox node it serves.
KIND = {"array": "array", "ragged": "ragged", "table": "table", "container": "container", "awkward": "awkward",
        "node": "table", "asset": "array", "zarr": "array", "data_source": "array", "stream": "table",
        "metadata": "container", "search": "container", "search-deep": "container", "distinct": "container",
        "revisions": "array", "register": "container", "webhooks": "container"}
DELETES_A_NODE = ("/api/v1/metadata/", "/api/v1/asset/", "/api/v1/revisions/", "/api/v1/stream/close/")
UNCLEAN = re.compile(r'Traceback|File "|/opt/tiled|site-packages|/usr/lib/python')
# The victims alternate: containers (v0, v2, …) and arrays (v1, v3, …).
containers, arrays = iter(NODES["victims"][0::2]), iter(NODES["victims"][1::2])


def family(template: str) -> str:
    parts = template.strip("/").split("/")
    if parts[0] == "zarr":
        return "zarr"
    return parts[2] if parts[:2] == ["api", "v1"] and len(parts) > 2 else parts[0]


def sandboxed(case) -> str:
    """The path to send: see the module's docstring."""
    template, generated = case.path, case.path_parameters["path"]
    turn = zlib.crc32(repr((case.method, template, generated, sorted(case.query.items()))).encode())
    if case.method.upper() == "DELETE" and template.startswith("/api/v1/metadata/"):
        return next(containers, f"{SANDBOX}/decoy/victims-used-up")
    if case.method.upper() == "DELETE" and template.startswith(DELETES_A_NODE):
        return next(arrays, f"{SANDBOX}/decoy/victims-used-up") if turn % 2 == 0 else f"{SANDBOX}/decoy/{generated}"
    kind = KIND.get(family(template))
    if turn % 3 and kind:
        return NODES[kind]
    return f"{SANDBOX}/{generated}"


@schemathesis.hook
def before_call(context, case, kwargs):
    if API_KEY:
        case.query.pop("api_key", None)
        case.cookies.pop("tiled_api_key", None)
        case.headers.pop("Authorization", None)  # case-insensitive
        case.headers["Authorization"] = f"Apikey {API_KEY}"
    if "path" in case.path_parameters:
        path = sandboxed(case)
        # Templates like /zarr/v2{path}.zattrs put no slash before the parameter.
        slash = "" if case.path.split("{path}")[0].endswith("/") else "/"
        case.path_parameters["path"] = slash + path


SHORT = 4096  # bytes, besides what the detail echoes of the request (FastAPI's 422 quotes the input)


def clean(response) -> bool:
    """A client error's body: short JSON with a `detail`, and no traceback or server path in it."""
    if not 400 <= response.status_code < 500:
        return True
    request = response.request
    echoed = len(request.url or "") + len(request.body or b"")
    if len(response.content) > SHORT + 2 * echoed:  # JSON escaping may double a character
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and "detail" in body and not UNCLEAN.search(response.text)


@schemathesis.hook
def after_call(context, case, response):
    LOG.write(json.dumps({"operation": f"{case.method.upper()} {case.path}", "status": response.status_code,
                          "bytes": len(response.content), "clean": clean(response),
                          "head": response.text[:200] if response.status_code >= 500 else ""}) + "\n")
