"""Live tier: PostgreSQL stops and comes back under a read load.

Replicas must leave HAProxy's rotation by themselves (their /readyz fails), come
back by themselves when the database does (no restart), and after that answer
with no 5xx: stale pooled connections are pre-pinged, not handed to requests.
Requests may fail only between the stop and the replicas' return; the test
prints the window.
"""

import threading
import time

import httpx
import pytest

from scripts import haproxy_stats
from scripts.docker_api import project_containers

pytestmark = pytest.mark.live


class Readers:
    """Clients reading metadata through HAProxy in a loop: (start, end, status or exception name)."""

    def __init__(self, url: str, api_key: str, path: str, clients: int = 3):
        self.results: list[tuple[float, float, object]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(url, api_key, path), daemon=True)
                        for _ in range(clients)]

    def run(self, url, api_key, path):
        with httpx.Client(base_url=url, headers={"Authorization": f"Apikey {api_key}"}, timeout=10) as client:
            while not self.stopping.is_set():
                t = time.monotonic()
                try:
                    outcome = client.get(path).status_code
                except httpx.HTTPError as err:
                    outcome = type(err).__name__
                self.results.append((t, time.monotonic(), outcome))
                time.sleep(0.02)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join()


def wait_until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def test_replicas_leave_and_rejoin_rotation_with_postgres(stack, tiled, api_key):
    if "resilience_pg" not in tiled:
        tiled.create_container("resilience_pg", metadata={"probe": True})
    (postgres,) = project_containers(stack.project, "postgres", all=False)
    replicas = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, "tiled", all=False)}
    n = len(replicas)
    with Readers(stack.local_url, api_key, "/api/v1/metadata/resilience_pg") as load:
        time.sleep(3)
        stopped = time.monotonic()
        postgres.stop(timeout=10)
        out = wait_until(lambda: haproxy_stats.up_count(stack.stats_url) == 0, 20, "every replica leaving HAProxy")
        time.sleep(3)
        started = time.monotonic()
        postgres.start()
        back = wait_until(lambda: haproxy_stats.up_count(stack.stats_url) == n, 90, "every replica returning")
        time.sleep(5)
    after_back = [o for t, _, o in load.results if t > back + 0.5]
    failed = [(t, end, o) for t, end, o in load.results if o != 200]
    before_stop = [o for _, end, o in load.results if end < stopped]
    print(f"\n{len(load.results)} reads: {len(before_stop)} done before the stop, {len(failed)} failed "
          f"{sorted({str(o) for *_, o in failed})} from {failed[0][1] - stopped:.1f}s to {failed[-1][1] - stopped:.1f}s "
          f"after the stop; every replica out of rotation {out - stopped:.1f}s after the stop; PostgreSQL down "
          f"{started - stopped:.1f}s; replicas back in rotation {back - started:.1f}s after its start; "
          f"{len(after_back)} reads after that, statuses {sorted(set(after_back))}")
    assert set(before_stop) == {200}
    assert failed and all(end >= stopped and t <= back + 0.5 for t, end, _ in failed), "failures outside the outage"
    assert set(after_back) == {200}, "5xx after PostgreSQL was back"
    assert len(after_back) > 20
    now = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, "tiled", all=False)}
    assert now == replicas, "replicas were restarted; they should have recovered by themselves"
