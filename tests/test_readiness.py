"""Fast tier: /readyz is served ahead of Tiled's own routes (the catalog pool's pre-ping is
patch 0024's, tested in tests/test_patches_cpu.py).

The failure path (PostgreSQL gone → 503 → out of HAProxy's rotation) is in
tests/test_resilience_live.py, against the real stack.
"""

from conftest import SQLITE_APP, probe_tiled_stack

PROBE = SQLITE_APP + r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tiled_stack import readiness
from starlette.testclient import TestClient
app = sqlite_app()
status = readiness.attach(app)
with TestClient(app) as client:
    ready, head = client.get("/readyz"), client.head("/readyz")
    health = client.get("/healthz")
print(json.dumps({"status": status, "ready": [ready.status_code, ready.json()], "head": head.status_code,
                  "health": health.status_code}))
"""


def test_readyz_answers_from_the_catalog():
    out = probe_tiled_stack(PROBE)
    assert out["ready"] == [200, {"ready": True}] and out["head"] == 200 and out["health"] == 200
    assert out["status"].startswith("readiness at /readyz")
