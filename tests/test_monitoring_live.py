"""Live tier: monitoring on the shared stack. The module turns TILED_MONITORING on with
`make up`, as an operator would (5 s scrapes, so that alerts resolve within a test), and
off again at the end: every target UP, targets follow `make scale`, a SIGKILLed replica and
a stopped PostgreSQL fire their alerts (pending, then firing after the rule's `for:`), every
dashboard query returns data after a short load, the console page shows curves in Chromium,
and the exporters' logins cannot read the stack's data."""

import json
import math
import time

import httpx
import psycopg
import pyarrow as pa
import pytest
import redis

from conftest import ROOT, StreamCollector, container_addresses, free_port, make
from scripts.lib import monitoring, wait
from scripts.lib.compose import MONITORING, Stack, profile_services
from scripts.lib.docker_api import client, project_containers, running

pytestmark = pytest.mark.live

SCRAPE_S = 5
DASHBOARD = ROOT / "monitoring" / "dashboards" / "tiled-stack.json"


@pytest.fixture(scope="module")
def monitored(stack, stack_env):
    original = stack_env.read_text()
    stack_env.write_text(original + f"TILED_MONITORING=on\nPROMETHEUS_PORT={free_port()}\n"
                                    f"PROMETHEUS_SCRAPE_INTERVAL={SCRAPE_S}s\n")
    try:
        make("up", stack_env)  # waits until every target is UP
        yield Stack()
    finally:
        if stack_env.read_text() != original:  # the last test did not get to turn it off
            stack_env.write_text(original)
            make("up", stack_env, check=False)


def alert_states(stack, name: str) -> set[str]:
    return {r["metric"]["alertstate"] for r in monitoring.query(stack, f'ALERTS{{alertname="{name}"}}')}


def until_resolved(stack, name: str, deadline_s: float = 90) -> float:
    started = time.monotonic()
    while alert_states(stack, name):
        assert time.monotonic() - started < deadline_s, f"{name} still active after {deadline_s}s"
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def for_seconds(name: str) -> float:
    import yaml

    groups = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == name]
    value = rule["for"]
    return float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


def tiled_targets(stack) -> list[str]:
    active = monitoring.api(stack, "targets", state="active")["activeTargets"]
    return sorted(t["labels"]["instance"] for t in active if t["labels"]["job"] == "tiled" and t["health"] == "up")


def test_every_replica_haproxy_and_each_exporter_is_an_up_target(monitored):
    active = monitoring.api(monitored, "targets", state="active")["activeTargets"]
    by_job = {}
    for target in active:
        by_job.setdefault(target["labels"]["job"], []).append(target)
    assert sorted(by_job) == sorted(monitoring.JOBS)
    assert all(t["health"] == "up" for t in active), [(t["scrapeUrl"], t["lastError"]) for t in active]
    replicas = {f"{address}:8000" for address in container_addresses(monitored, "tiled")}
    assert {t["labels"]["instance"] for t in by_job["tiled"]} == replicas
    # Published on the loopback address only.
    (prometheus,) = project_containers(monitored.project, "prometheus", all=False)
    bindings = prometheus.attrs["NetworkSettings"]["Ports"]["9090/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
    # The desired count is .env's TILED_REPLICAS.
    assert monitoring.scalar(monitored, "tiled_stack_desired_replicas") == monitored.replicas


def test_the_metrics_key_works_on_a_replica_directly_and_nowhere_else(monitored, values):
    key = {"Authorization": f"Apikey {values['TILED_METRICS_KEY']}"}
    address = next(iter(container_addresses(monitored, "tiled")))
    direct = httpx.get(f"http://{address}:8000/api/v1/metrics", headers=key, timeout=10)
    assert direct.status_code == 200 and "tiled_request_duration_seconds_bucket" in direct.text
    assert httpx.get(f"{monitored.local_url}/api/v1/metrics", headers=key, timeout=10).status_code == 401
    assert httpx.get(f"http://{address}:8000/api/v1/metadata/", headers=key, timeout=10).status_code == 401
    assert httpx.get(f"http://{address}:8000/api/v1/metrics", timeout=10).status_code == 401


def test_the_exporters_logins_cannot_read_the_stacks_data(monitored, values):
    (address,) = container_addresses(monitored, "postgres")
    login = f"postgresql://tiled_monitor:{values['MONITORING_DB_PASSWORD']}@{address}:5432"
    for database in ("tiled_catalog", "tiled_storage", "tiled_authn"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(f"{login}/{database}", connect_timeout=5)
    with psycopg.connect(f"{login}/postgres", connect_timeout=5) as conn:
        assert conn.execute("select count(*) from pg_stat_activity").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select rolpassword from pg_authid")
        conn.rollback()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("create table t (x int)")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"postgresql://tiled_monitor:wrong@{address}:5432/postgres", connect_timeout=5)
    (redis_address,) = container_addresses(monitored, "redis")
    r = redis.Redis(host=redis_address, username="tiled_monitor", password=values["MONITORING_REDIS_PASSWORD"])
    assert r.ping() and "used_memory" in r.info("memory")
    for command in (("GET", "x"), ("KEYS", "*"), ("CONFIG", "GET", "requirepass"), ("SUBSCRIBE", "x"),
                    ("FLUSHALL",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)


def test_targets_follow_make_scale_within_a_minute(monitored):
    for count in (4, 3):
        make("scale", monitored.env_path, N=str(count))
        started = time.monotonic()
        while len(tiled_targets(monitored)) != count:
            assert time.monotonic() - started < 60, f"targets after `make scale N={count}`: {tiled_targets(monitored)}"
            time.sleep(1)
        print(f"{count} replicas scraped {time.monotonic() - started:.0f}s after `make scale N={count}` returned")
    assert set(tiled_targets(monitored)) == {f"{a}:8000" for a in container_addresses(monitored, "tiled")}


def test_a_sigkilled_replica_and_a_stopped_postgres_fire_their_alerts_which_resolve(monitored):
    """Both faults at once (one wait for the rules' `for:`, not two); each alert is read on
    its own: TiledReplicaDown counts scrapes of the metrics route, which needs no database."""
    until_resolved(monitored, "TiledReplicaDown")  # a replica `make scale` just stopped may linger one scrape
    until_resolved(monitored, "PostgresDown")
    victim = project_containers(monitored.project, "tiled", all=False)[0]
    postgres = running(monitored.project, "postgres")
    victim.kill()  # SIGKILL; Docker leaves a killed container stopped
    postgres.stop(timeout=20)
    started, seen = time.monotonic(), {"TiledReplicaDown": {}, "PostgresDown": {}}
    deadline = max(for_seconds(name) for name in seen) + 60
    try:
        while not all("firing" in states for states in seen.values()):
            assert time.monotonic() - started < deadline, f"after {deadline}s: {seen}"
            for name, states in seen.items():
                for state in alert_states(monitored, name):
                    states.setdefault(state, round(time.monotonic() - started, 1))
            time.sleep(1)
    finally:
        postgres.start()
        victim.start()
    for name, states in seen.items():
        print(f"{name} after the fault: {states}")
        assert states.get("pending") is not None, f"{name} never pending before firing: {states}"
        assert states["firing"] - states["pending"] >= for_seconds(name) - SCRAPE_S - 2, (name, states)
    wait.until_healthy(monitored, monitored.replicas, deadline_s=180)
    for name in seen:
        print(f"{name} resolved {until_resolved(monitored, name)}s after the stack was healthy again")


@pytest.fixture(scope="module")
def loaded(monitored, tiled, api_key):
    """Five scrapes' worth of ordinary traffic through HAProxy, with one websocket subscriber,
    so that every panel has something to draw (rates need two samples in their window)."""
    node = tiled.create_appendable_table(pa.schema([("value", pa.int64())]), key=f"monitored_{time.time_ns()}")
    node.append_partition(0, pa.table({"value": [-1]}))
    collector = StreamCollector("value")
    subscription = node.subscribe()
    subscription.new_data.add_callback(collector.on_data)
    subscription.start_in_thread()
    headers = {"Authorization": f"Apikey {api_key}"}
    try:
        with httpx.Client(base_url=monitored.local_url, headers=headers, timeout=30) as http:
            started, value = time.monotonic(), 0
            while time.monotonic() - started < 5 * SCRAPE_S:
                for path in ("/api/v1/", "/api/v1/metadata/", "/api/v1/search/", f"/api/v1/metadata/{node.item['id']}"):
                    assert http.get(path).status_code == 200
                value += 1
                node.append_partition(0, pa.table({"value": [value]}))
                time.sleep(0.2)
        collector.wait_for(value)
        yield node
    finally:
        subscription.disconnect()


def test_every_dashboard_query_returns_data_after_a_short_load(monitored, loaded):
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = []
    for panel in panels:
        for target in panel.get("targets", []):
            result = monitoring.query(monitored, target["expr"])
            numbers = [float(r["value"][1]) for r in result]
            if not any(math.isfinite(n) for n in numbers):  # NaN: a latency with no request in 1 min
                empty.append(f"{panel['title']}: {target['expr']} → {result}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    print(f"{sum(len(p.get('targets', [])) for p in panels)} queries of {len(panels)} panels returned data")


def test_the_console_page_draws_real_curves_in_chromium(monitored, loaded, images, tmp_path):
    from PIL import Image

    image = images.browser
    url = f"{monitored.prometheus_url}/consoles/tiled-stack.html"
    tmp_path.chmod(0o777)
    options = dict(network_mode="host", remove=True, volumes={str(tmp_path): {"bind": "/out", "mode": "rw"}})
    dom = client().containers.run(image, ["--virtual-time-budget=20000", "--dump-dom", url], **options).decode()
    client().containers.run(image, ["--virtual-time-budget=20000", "--window-size=1400,3600",
                                    "--screenshot=/out/page.png", url], **options)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert f'data-panels="{len(panels)}"' in dom, dom[-2000:]
    assert f'data-with-data="{len(panels)}"' in dom, [line for line in dom.splitlines() if "data-series" in line]
    screenshot = Image.open(tmp_path / "page.png").convert("RGB")
    # Curves are saturated colours; text, axes and the background are greys.
    colours = {}
    for count, (r, g, b) in screenshot.getcolors(maxcolors=2**24):
        if max(r, g, b) - min(r, g, b) > 80:
            colours[(r // 32, g // 32, b // 32)] = colours.get((r // 32, g // 32, b // 32), 0) + count
    curve_pixels = sum(colours.values())
    print(f"console page: {len(panels)} panels with data, {curve_pixels} curve pixels in {len(colours)} colours")
    assert curve_pixels > 2000 and len([c for c, n in colours.items() if n > 50]) >= 3, colours


def test_make_status_adds_a_health_line_from_prometheus(monitored, loaded):
    done = make("status", monitored.env_path)
    line = next(line for line in done.stdout.splitlines() if "last 5 min:" in line)
    rate = float(line.split("last 5 min:")[1].split()[0])
    assert rate > 0 and "5xx/s (" in line and " %)" in line and "p99" in line and "alert(s) firing" in line, line


def test_turning_monitoring_off_removes_it_and_keeps_its_data(monitored, stack_env):
    text = stack_env.read_text()
    stack_env.write_text("\n".join(line for line in text.splitlines()
                                   if not line.startswith(("TILED_MONITORING=", "PROMETHEUS_"))) + "\n")
    make("up", stack_env)
    for service in profile_services(MONITORING):
        assert not project_containers(monitored.project, service), f"{service} still has a container"
    assert client().volumes.get(f"{monitored.project}_prometheus")
    assert not Stack().monitoring
