"""Fast tier: /readyz is served ahead of Tiled's own routes and the catalog pool pre-pings.

The failure path (PostgreSQL gone → 503 → out of HAProxy's rotation) is in
tests/test_resilience_live.py, against the real stack.
"""

from conftest import SQLITE_APP, probe_tiled_stack

PROBE = SQLITE_APP + r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tiled_stack import readiness
status = readiness.install()
from starlette.testclient import TestClient
app = sqlite_app()
engine = app.state.root_tree.context.engine
with TestClient(app) as client:
    ready, head = client.get("/readyz"), client.head("/readyz")
    health = client.get("/healthz")
print(json.dumps({"status": status, "ready": [ready.status_code, ready.json()], "head": head.status_code,
                  "health": health.status_code, "pre_ping": engine.pool._pre_ping}))
"""


def test_readyz_answers_from_the_catalog_and_pool_pre_pings():
    out = probe_tiled_stack(PROBE)
    assert out["ready"] == [200, {"ready": True}] and out["head"] == 200 and out["health"] == 200
    assert out["pre_ping"] is True
