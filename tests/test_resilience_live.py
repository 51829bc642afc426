"""Live tier: PostgreSQL stops and comes back under a read load.

Replicas must leave HAProxy's rotation by themselves (their /readyz fails), come
back by themselves when the database does (no restart), and after that answer
with no 5xx: stale pooled connections are pre-pinged, not handed to requests.
Requests may fail only between the stop and the replicas' return; the test
prints the window.
"""

import os
import signal
import time

import httpx
import pytest

from conftest import container_addresses, make, storage_dsn
from load_clients import (TABLE_PATH, NodeWriter, Readers, Scans, burst, incomplete_runs, keys_in_catalog,
                          reading_paths, wait_until)
from scripts.lib import haproxy_stats
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live


def storage_connections(stack, values) -> int:
    """Connections to tiled_storage that PostgreSQL has open (the replicas' storage pools)."""
    import psycopg

    with psycopg.connect(storage_dsn(stack, values)) as conn:
        (count,) = conn.execute("select count(*) - 1 from pg_stat_activity where datname = 'tiled_storage'").fetchone()
    return count


def test_replicas_leave_and_rejoin_rotation_with_postgres(stack, tiled, api_key, values):
    parent = f"pg_{time.monotonic_ns()}"
    tiled.create_container(parent)
    (postgres,) = project_containers(stack.project, "postgres", all=False)
    replicas = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, "tiled", all=False)}
    n = len(replicas)
    backends = [f"http://{a}:8000" for a in container_addresses(stack, "tiled")]
    with Readers(stack.local_url, api_key, reading_paths(tiled, parent)) as load, \
            NodeWriter(stack.local_url, api_key, parent) as writer:
        # Fill each replica's storage pool (4 + 4 overflow) with connections that the restart
        # will leave stale: unless they are pre-pinged, each would fail one table read.
        filled = [burst(url, api_key, TABLE_PATH, 8) for url in backends]
        pooled = storage_connections(stack, values)
        time.sleep(3)
        stopped = time.monotonic()
        postgres.stop(timeout=10)
        out = wait_until(lambda: haproxy_stats.up_count(stack.stats_url) == 0, 20, "every replica leaving HAProxy")
        time.sleep(3)
        started = time.monotonic()
        postgres.start()
        back = wait_until(lambda: haproxy_stats.up_count(stack.stats_url) == n, 90, "every replica returning")
        drained = [burst(url, api_key, TABLE_PATH, 8) for url in backends]
        time.sleep(5)
    after_back = [o for t, _, o in load.results if t > back + 0.5]
    failed = [(t, end, o) for t, end, o in load.results if o != 200]
    before_stop = [o for _, end, o in load.results if end < stopped]
    writes_after = [writer.outcomes[k] for k, end in writer.finished.items() if end > back + 1]
    answered = {k for k, o in writer.outcomes.items() if o == 200}
    failed_writes = len(writer.outcomes) - len(answered)
    retried = writer.retry_failed()
    keys = keys_in_catalog(tiled, parent)
    print(f"\n{len(writer.outcomes)} creates, {failed_writes} failed during the outage → retried: "
          f"{sorted(set(map(str, retried.values())))}; {len(writes_after)} after the return, statuses "
          f"{sorted(set(map(str, writes_after)))}")
    print(f"{len(load.results)} reads: {len(before_stop)} done before the stop, {len(failed)} failed "
          f"{sorted({str(o) for *_, o in failed})} from {failed[0][1] - stopped:.1f}s to {failed[-1][1] - stopped:.1f}s "
          f"after the stop; every replica out of rotation {out - stopped:.1f}s after the stop; PostgreSQL down "
          f"{started - stopped:.1f}s; replicas back in rotation {back - started:.1f}s after its start; "
          f"{len(after_back)} reads after that, statuses {sorted(set(after_back))}")
    print(f"{pooled} pooled storage connections before the stop; after the return, 8 table reads at once "
          f"on each replica: statuses {sorted({str(o) for b in drained for o in b})}")
    assert [set(b) for b in filled] == [{200}] * n and pooled >= n
    assert [set(b) for b in drained] == [{200}] * n, "a stale storage connection failed a table read"
    assert set(before_stop) == {200}
    assert failed and all(end >= stopped and t <= back + 0.5 for t, end, _ in failed), "failures outside the outage"
    assert set(after_back) == {200}, "5xx after PostgreSQL was back"
    assert len(after_back) > 20
    assert writes_after and set(writes_after) == {200}, "a write failed after PostgreSQL was back"
    assert answered <= set(keys) and sorted(keys) == sorted(writer.outcomes), "a create was lost or duplicated"
    assert all(o in (200, 409) for o in retried.values()), retried
    now = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, "tiled", all=False)}
    assert now == replicas, "replicas were restarted; they should have recovered by themselves"


def test_killing_a_replica_mid_load_fails_no_read_and_loses_no_reported_write(stack, tiled, api_key):
    parent = f"kill_{time.monotonic_ns()}"
    tiled.create_container(parent)
    victim = project_containers(stack.project, "tiled", all=False)[0]
    try:
        with Readers(stack.local_url, api_key, reading_paths(tiled, parent)) as load, \
                NodeWriter(stack.local_url, api_key, parent) as writer, Scans(stack.local_url, api_key) as scans:
            time.sleep(4)
            victim.kill()  # SIGKILL: no drain, no graceful shutdown
            time.sleep(8)
    finally:
        victim.start()
    reads = [o for *_, o in load.results]
    failed_writes = {k: o for k, o in writer.outcomes.items() if o != 200}
    retried = writer.retry_failed()
    keys = keys_in_catalog(tiled, parent)
    incomplete = incomplete_runs(tiled, scans.written())
    print(f"\nSIGKILL of {victim.name}: {len(reads)} reads, statuses {sorted(set(map(str, reads)))}; "
          f"{len(writer.outcomes)} creates, {len(failed_writes)} failed {sorted(set(map(str, failed_writes.values())))} "
          f"→ retried: {sorted(set(map(str, retried.values())))}; {len(scans.results)} Bluesky scans, "
          f"{len(scans.written())} reported written, incomplete {incomplete}; errors {scans.errors()}")
    assert reads and set(reads) == {200}, "an idempotent read failed"
    assert sorted(keys) == sorted(set(keys)) == sorted(writer.outcomes), "a create was lost or duplicated"
    assert all(o in (200, 409) for o in retried.values()), retried
    assert scans.written() and not incomplete, "a run reported as written is incomplete"


def test_rollout_mid_load_fails_no_request(stack, tiled, api_key):
    parent = f"rollout_{time.monotonic_ns()}"
    tiled.create_container(parent)
    before = {c.id for c in project_containers(stack.project, "tiled", all=False)}
    with Readers(stack.local_url, api_key, reading_paths(tiled, parent)) as load, \
            NodeWriter(stack.local_url, api_key, parent) as writer:
        time.sleep(2)
        t0 = time.monotonic()
        make("rollout", stack.env_path)
        took = time.monotonic() - t0
        time.sleep(2)
    after = {c.id for c in project_containers(stack.project, "tiled", all=False)}
    reads = [o for *_, o in load.results]
    keys = keys_in_catalog(tiled, parent)
    print(f"\nmake rollout of {len(before)} replicas took {took:.0f}s; during it {len(reads)} reads "
          f"{sorted(set(map(str, reads)))} and {len(writer.outcomes)} creates "
          f"{sorted(set(map(str, writer.outcomes.values())))}")
    assert len(after) == len(before) and not (after & before), "every replica must be replaced"
    assert set(reads) == {200}
    assert set(writer.outcomes.values()) == {200}
    assert sorted(keys) == sorted(writer.outcomes)


def test_overload_queues_or_sheds_and_recovers(stack, tiled, api_key):
    """4× more concurrent clients than HAProxy lets through (maxconn per replica × replicas):
    requests queue in HAProxy or get 503/429, never a 500 from an exhausted pool."""
    import asyncio

    from benchmarks import load

    from benchmarks.stack import haproxy_maxconn

    per_replica = haproxy_maxconn(stack)
    replicas = haproxy_stats.up_count(stack.stats_url)
    clients = 4 * per_replica * replicas
    if "overload" not in tiled:
        tiled.create_container("overload", metadata={"probe": True})
    headers = {"Authorization": f"Apikey {api_key}"}

    async def request(session, rng):
        path = "/api/v1/metadata/overload" if rng.random() < 0.7 else "/api/v1/search/?page[limit]=10"
        async with session.get(stack.local_url + path, headers=headers) as r:
            await r.read()
            return r.status

    sample = asyncio.run(load.closed_loop(request, clients, 10.0, warmup=1.0))
    with httpx.Client(base_url=stack.local_url, headers=headers, timeout=10) as client:
        after = [client.get("/api/v1/metadata/overload").status_code for _ in range(20)]
    print(f"\n{clients} clients against {replicas} replicas × maxconn {per_replica}: {sample.requests} requests in "
          f"10 s, statuses {dict(sample.statuses)}, failures {dict(sample.failures)}, p50 {sample.percentile(50):.0f} ms, "
          f"p99 {sample.percentile(99):.0f} ms; afterwards {sorted(set(after))}")
    assert sample.requests > 0 and set(sample.statuses) <= {200, 429, 503}, sample.statuses
    assert not sample.failures
    assert set(after) == {200}


def test_redis_restart_mid_stream(stack, tiled):
    """Redis restarts between two batches of writes: the subscription resumes by itself
    and the catalog holds every update exactly once."""
    import pyarrow as pa

    from conftest import StreamCollector

    key = f"redis_{time.monotonic_ns()}"
    node = tiled.create_appendable_table(pa.schema([("value", pa.int64())]), key=key)
    node.append_partition(0, pa.table({"value": [-1]}))
    collector = StreamCollector("value")
    subscription = node.subscribe()
    subscription.new_data.add_callback(collector.on_data)
    subscription.start_in_thread()
    outcomes = {}
    try:
        for value in range(5):
            node.append_partition(0, pa.table({"value": [value]}))
        collector.wait_for(5)
        (redis,) = project_containers(stack.project, "redis", all=False)
        t0 = time.monotonic()
        redis.restart(timeout=10)
        wait_until(lambda: redis.reload() or redis.attrs["State"].get("Health", {}).get("Status") == "healthy",
                   60, "Redis healthy again")
        down = time.monotonic() - t0
        for value in range(5, 10):
            try:
                node.append_partition(0, pa.table({"value": [value]}))
                outcomes[value] = "ok"
            except Exception as err:  # reported, and then checked against the catalog
                outcomes[value] = type(err).__name__
        collector.wait_for(10, timeout=60)
    finally:
        subscription.disconnect()
    stored = sorted(node.read()["value"])
    print(f"\nRedis restarted in {down:.1f}s; writes after it: {outcomes}; delivered {collector.values}; "
          f"stored {stored}")
    assert set(outcomes.values()) == {"ok"}
    assert stored == list(range(-1, 10))
    assert collector.values == list(range(10))


def test_scale_up_and_down_mid_load_fails_no_read_or_write(stack, tiled, api_key):
    parent = f"scale_{time.monotonic_ns()}"
    tiled.create_container(parent)
    n = haproxy_stats.up_count(stack.stats_url)
    with Readers(stack.local_url, api_key, reading_paths(tiled, parent)) as load, \
            NodeWriter(stack.local_url, api_key, parent) as writer:
        time.sleep(1)
        make("scale", stack.env_path, N=str(n + 1))
        make("scale", stack.env_path, N=str(n - 1))
        make("scale", stack.env_path, N=str(n))
        time.sleep(2)
    reads = [o for *_, o in load.results]
    keys = keys_in_catalog(tiled, parent)
    print(f"\nscale {n}→{n + 1}→{n - 1}→{n}: {len(reads)} reads {sorted(set(map(str, reads)))}, "
          f"{len(writer.outcomes)} creates {sorted(set(map(str, writer.outcomes.values())))}")
    assert set(reads) == {200} and set(writer.outcomes.values()) == {200}
    assert sorted(keys) == sorted(writer.outcomes)


def test_every_process_killed_at_once_comes_back_by_itself(stack, tiled, api_key):
    """What a power cut or a host reboot does to the stack: every process of every service
    dies at once, uncleanly. They are SIGKILLed from the host, not through Docker, so Docker
    treats it as a crash and applies the restart policy (`unless-stopped`), as it does when
    the daemon starts after a reboot. Everything must come back with no command, and every
    write answered before the cut must still be there.

    Not covered: the page cache survives here (a real power cut also loses what PostgreSQL
    had not fsynced; it fsyncs before answering a commit), and the daemon's own restart is
    not exercised (it would stop every other container on the host running the tests)."""
    if os.geteuid() != 0:
        pytest.fail("this test kills the stack's processes from the host: run the tests as root")
    parent = f"cut_{time.monotonic_ns()}"
    tiled.create_container(parent)
    n = len(project_containers(stack.project, "tiled", all=False))

    def serving():
        try:
            return httpx.get(f"{stack.local_url}/api/v1/metadata/{parent}", timeout=2,
                             headers={"Authorization": f"Apikey {api_key}"}).status_code == 200
        except httpx.HTTPError:
            return False

    def all_up():
        try:
            return haproxy_stats.up_count(stack.stats_url) == n
        except Exception:  # HAProxy itself is still coming back
            return False

    wait_until(all_up, 60, f"all {n} replicas in HAProxy before the cut")
    containers = project_containers(stack.project, all=False)
    started = {c.name: c.attrs["State"]["StartedAt"] for c in containers}
    with NodeWriter(stack.local_url, api_key, parent) as writer, Scans(stack.local_url, api_key) as scans:
        time.sleep(4)
        cut = time.monotonic()
        for c in containers:
            os.kill(c.attrs["State"]["Pid"], signal.SIGKILL)
        first = wait_until(serving, 180, "a read through HAProxy after the cut")
        back = wait_until(all_up, 180, f"all {n} replicas back in HAProxy")
        time.sleep(3)
    now = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, all=False)}
    answered = [key for key, outcome in writer.outcomes.items() if outcome == 200]
    keys = keys_in_catalog(tiled, parent)
    incomplete = incomplete_runs(tiled, scans.written())
    print(f"\nSIGKILL of all {len(containers)} processes ({', '.join(sorted(started))}): serving again "
          f"{first - cut:.1f}s later, all {n} replicas in HAProxy after {back - cut:.1f}s; {len(writer.outcomes)} "
          f"creates, {len(answered)} answered 200, all of them in the catalog: {set(answered) <= set(keys)}; "
          f"{len(scans.written())} scans reported written, incomplete {incomplete}")
    assert sorted(now) == sorted(started), "a service did not come back"
    assert all(now[name] != started[name] for name in started), "a process was not restarted"
    assert set(answered) <= set(keys) <= set(writer.outcomes), "a write answered before the cut was lost"
    assert scans.written() and not incomplete, "a run reported as written is incomplete"
