"""Readiness that means something: GET /readyz, and stale connections replaced.

Tiled's /healthz answers 200 whether or not PostgreSQL can be reached. HAProxy
checks /readyz instead: 200 only when this replica can run a query on its
catalog database within 2 s, else 503. A replica that loses PostgreSQL leaves
HAProxy's rotation by itself and comes back by itself when the database does;
the process is not restarted (Docker's healthcheck stays on /healthz: liveness).

Tiled builds its catalog pool with `pool_pre_ping=False` (catalog/adapter.py,
`from_uri`), so after a PostgreSQL restart every pooled connection fails one
request with a 500. Pre-ping is turned on here: a dead connection is replaced
before a request uses it.

Attached to the app Tiled builds through app_hooks.
"""

import asyncio

from tiled_stack import app_hooks

PATH = "/readyz"


def readiness_route(engine):
    from sqlalchemy import text
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def readyz(request):
        try:
            async with asyncio.timeout(2):
                async with engine.connect() as connection:
                    await connection.execute(text("select 1"))
        except Exception as err:  # any failure means: do not send me requests
            return JSONResponse({"ready": False, "catalog": type(err).__name__}, status_code=503)
        return JSONResponse({"ready": True})

    return Route(PATH, readyz, methods=["GET", "HEAD"])


def attach(app) -> None:
    engine = app.state.root_tree.context.engine
    engine.pool._pre_ping = True
    app.router.routes.insert(0, readiness_route(engine))  # before Tiled's catch-all UI mount


def install() -> str:
    app_hooks.after_build(attach)
    return f"readiness at {PATH} (catalog database query), catalog pool pre-ping on"
