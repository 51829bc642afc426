"""Fast tier: /readyz is served ahead of Tiled's own routes and the catalog pool pre-pings.

The failure path (PostgreSQL gone → 503 → out of HAProxy's rotation) is in
tests/test_resilience_live.py, against the real stack.
"""

from conftest import probe_tiled_stack

PROBE = r"""
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
from tiled_stack import readiness
status = readiness.install()
import tiled.server.app as tiled_app
from starlette.testclient import TestClient
d = tempfile.mkdtemp()
config = {"authentication": {"single_user_api_key": "k"},
          "trees": [{"path": "/", "tree": "catalog",
                     "args": {"uri": f"sqlite:///{d}/c.db", "init_if_not_exists": True,
                              "writable_storage": [f"file://{d}/data"]}}]}
app = tiled_app.build_app_from_config(config)
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
