"""Readiness that means something: GET /readyz.

Tiled's /healthz answers 200 whether or not PostgreSQL can be reached. HAProxy
checks /readyz instead: 200 only when this replica can run a query on its
catalog database within 2 s, else 503. A replica that loses PostgreSQL leaves
HAProxy's rotation by itself and comes back by itself when the database does;
the process is not restarted (Docker's healthcheck stays on /healthz: liveness).
That the pooled connections survive a PostgreSQL restart is patch 0024's work.
"""

import asyncio

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


def attach(app) -> str:
    """Add GET /readyz to the app Tiled built; return a line for the log."""
    engine = app.state.root_tree.context.engine
    app.router.routes.insert(0, readiness_route(engine))  # before Tiled's catch-all UI mount
    return f"readiness at {PATH} (catalog database query)"
