"""Fast tier: the monitoring part's configuration, alert rules, dashboard and logins,
checked with Debian's promtool 2.42 (the image's) and without Docker."""

import asyncio
import base64
import hashlib
import hmac
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SQLITE_APP, probe_tiled_stack
from scripts import env_file
from scripts.lib import promtool
from scripts.lib.compose import MONITORING, Stack, profile_services
from scripts.lib.say import Failure

MONITORING_DIR = ROOT / "monitoring"
DASHBOARD = MONITORING_DIR / "dashboards" / "tiled-stack.json"


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def promtool_path():
    return promtool.ensure()  # fetched once; a failure here fails the tests (never a skip)


def run_promtool(binary, *args, cwd=MONITORING_DIR):
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def render(tmp_path, promtool_path, **env):
    """entrypoint.py check-config, as the image's build runs it: render, then promtool checks."""
    environment = {"PATH": f"{promtool_path.parent}:/usr/bin:/bin", "MONITORING_SOURCE_DIR": str(MONITORING_DIR),
                   "MONITORING_CONFIG_DIR": str(tmp_path / "run"), "TILED_METRICS_KEY": "k" * 64, **env}
    return subprocess.run([sys.executable, "-I", str(MONITORING_DIR / "entrypoint.py"), "check-config"],
                          capture_output=True, text=True, env=environment)


def test_rendered_prometheus_config_and_rules_pass_promtool(tmp_path, promtool_path):
    done = render(tmp_path, promtool_path, TILED_REPLICAS="5", PROMETHEUS_SCRAPE_INTERVAL="5s",
                  PROMETHEUS_ALERTMANAGERS="am1.facility.org:9093, am2:9093")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((tmp_path / "run" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["am1.facility.org:9093",
                                                                                       "am2:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"tiled", "haproxy", "postgres", "redis", "volumes", "prometheus"}
    assert jobs["tiled"]["dns_sd_configs"] == [{"names": ["tiled"], "type": "A", "port": 8000,
                                                 "refresh_interval": "5s"}]
    key_file = tmp_path / "run" / "metrics.key"
    assert jobs["tiled"]["authorization"]["credentials_file"] == str(key_file)
    assert key_file.read_text() == "k" * 64 and key_file.stat().st_mode & 0o077 == 0
    assert "k" * 64 not in (tmp_path / "run" / "prometheus.yml").read_text()
    rules = (tmp_path / "run" / "stack.rules.yml").read_text()
    assert "expr: vector(5)" in rules
    run_promtool(promtool_path, "check", "rules", str(tmp_path / "run" / "stack.rules.yml"))


@pytest.mark.parametrize("env, message", [
    ({"TILED_METRICS_KEY": ""}, "TILED_METRICS_KEY is unset"),
    ({"PROMETHEUS_SCRAPE_INTERVAL": "fast"}, "PROMETHEUS_SCRAPE_INTERVAL='fast' is not a duration"),
    ({"PROMETHEUS_SCRAPE_INTERVAL": "1m"}, "is not a duration from 1s to 30s"),
    ({"PROMETHEUS_RETENTION_SIZE": "2 gigs"}, "PROMETHEUS_RETENTION_SIZE='2 gigs' is not a size"),
    ({"PROMETHEUS_ALERTMANAGERS": "http://am:9093/"}, "is not host:port"),
])
def test_bad_monitoring_settings_are_refused_with_what_to_do(tmp_path, promtool_path, env, message):
    done = render(tmp_path, promtool_path, **env)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_alert_rules_pass_their_promtool_unit_tests(promtool_path):
    run_promtool(promtool_path, "check", "rules", "alerts.yml")
    out = run_promtool(promtool_path, "test", "rules", "alerts.test.yml")
    assert "SUCCESS" in out


def alert_names():
    groups = yaml.safe_load((MONITORING_DIR / "alerts.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_fires_in_a_unit_test_and_is_explained_in_the_readme():
    tests = yaml.safe_load((MONITORING_DIR / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    readme = (ROOT / "README.md").read_text()
    names = alert_names()
    assert len(names) >= 13
    for name in names:
        assert name in fired, f"no promtool test case expects {name} to fire"
        assert f"`{name}`" in readme, f"the README's Monitoring section does not explain {name}"


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def test_every_dashboard_query_parses(tmp_path, promtool_path):
    queries = dashboard_queries()
    assert len(queries) >= 14
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    run_promtool(promtool_path, "check", "rules", str(tmp_path / "dashboard.rules.yml"))
    for title, expr in queries:
        assert "$" not in expr, f"{title}: a Grafana variable in {expr} (the console page cannot resolve it)"


def test_console_page_holds_every_panel_and_no_go_template_action(tmp_path):
    out = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-I", str(MONITORING_DIR / "console.py"), str(DASHBOARD), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "{{" not in page  # Prometheus serves it through Go's template engine
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', page), "the page loads something from elsewhere"
    embedded = [json.loads(base64.b64decode(blob))
                for blob in re.findall(r'"([A-Za-z0-9+/=]{200,})"', page)]
    exprs = json.dumps(embedded)
    for _, expr in dashboard_queries():
        assert json.dumps(expr)[1:-1] in exprs


def test_monitoring_is_off_by_default_and_on_adds_its_services(env_path):
    stack = Stack(env_file.ensure())
    assert not stack.monitoring
    assert set(yaml.safe_load(stack.run("config", capture=True).stdout)["services"]).isdisjoint(
        profile_services(MONITORING))
    env_path.write_text(env_path.read_text() + "TILED_MONITORING=on\nPROMETHEUS_PORT=19191\n")
    stack = Stack(env_file.ensure())
    assert stack.monitoring and stack.prometheus_url == "http://127.0.0.1:19191"
    services = yaml.safe_load(stack.run("config", capture=True).stdout)["services"]
    assert set(profile_services(MONITORING)) == {"prometheus", "postgres-monitor-role", "postgres-exporter",
                                                  "redis-exporter", "volumes-exporter"}
    assert set(profile_services(MONITORING)) <= set(services)
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"haproxy", "prometheus"}
    assert published["prometheus"][0]["host_ip"] == "127.0.0.1"
    assert published["prometheus"][0]["published"] == "19191"
    mounts = {m["target"]: m for m in services["volumes-exporter"]["volumes"]}
    assert mounts["/metrics"]["source"] == str(stack.metrics_dir) and mounts["/metrics"]["read_only"]
    assert all(m.get("read_only") for m in mounts.values())
    for name in profile_services(MONITORING):
        assert services[name]["networks"].keys() >= {"backend"}
        text = json.dumps([services[name].get(k) for k in ("command", "entrypoint", "healthcheck")])
        for key in env_file.secret_keys():
            assert stack.values[key] not in text, f"{key} appears in {name}'s command or healthcheck"
    assert "POSTGRES_PASSWORD" in services["postgres-monitor-role"]["environment"]
    for name in ("prometheus", "postgres-exporter", "redis-exporter", "volumes-exporter"):
        assert "POSTGRES_PASSWORD" not in services[name].get("environment", {}), name


def test_a_bad_monitoring_switch_is_refused(env_path):
    env_path.write_text("TILED_MONITORING=yes please\n")
    with pytest.raises(Failure, match="TILED_MONITORING='yes please' is neither on nor off"):
        Stack(env_file.ensure())


def test_backup_metric_is_written_atomically_in_textfile_format(env_path):
    from scripts.lib import monitoring

    stack = Stack(env_file.ensure())
    monitoring.write_metric(stack, "tiled_stack_last_backup_timestamp_seconds", "When.", 1700000000)
    text = (stack.metrics_dir / "tiled_stack_last_backup_timestamp_seconds.prom").read_text()
    assert text.splitlines()[-1] == "tiled_stack_last_backup_timestamp_seconds 1700000000"
    assert not list(stack.metrics_dir.glob("*.partial"))


def test_postgres_role_password_is_a_correct_scram_verifier():
    role = load(ROOT / "postgres" / "monitor_role.py", "monitor_role")
    key = os.urandom(32)
    assert role.hmac_sha256(key, b"Client Key") == hmac.new(key, b"Client Key", hashlib.sha256).digest()
    # RFC 7677's example: password "pencil", this salt, 4096 iterations.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = role.scram_verifier("pencil", salt)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert verifier.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert verifier.endswith(":" + base64.b64encode(server_key).decode())


def test_redis_monitoring_user_cannot_read_keys_channels_or_configuration():
    redis_entry = load(ROOT / "redis" / "entrypoint.py", "redis_entrypoint")
    commands = redis_entry.MONITOR_COMMANDS.split()
    assert all(c.startswith("+") for c in commands)
    assert not any(c.split("|")[0] in ("+config", "+acl", "+get", "+keys", "+scan", "+subscribe", "+@all",
                                       "+@read") for c in commands)


def metrics_layer():
    sys.path.insert(0, str(ROOT / "tiled"))
    from tiled_stack import metrics

    return metrics


def call(layer, path="/api/v1/metrics", headers=(), method="GET"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "headers": list(headers)}
    asyncio.run(layer(scope, receive, send))
    return sent


def test_metrics_key_opens_only_the_metrics_route_and_only_off_haproxy():
    metrics = metrics_layer()
    passed = []

    async def tiled_app(scope, receive, send):  # what Tiled would answer: the request reached it
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 401, "headers": []})

    key = "m" * 64
    layer = metrics.MetricsKey(tiled_app, key=key)
    good = [(b"authorization", f"Apikey {key}".encode())]
    answer = call(layer, headers=good)
    assert answer[0]["status"] == 200 and b"# HELP" in answer[1]["body"]
    assert passed == []
    call(layer, path="/api/v1/metadata/", headers=good)
    call(layer, headers=[(b"authorization", f"Apikey {key[:-1]}x".encode())])
    call(layer, headers=[*good, (b"x-forwarded-for", b"10.0.0.9")])  # through HAProxy
    call(layer, headers=good, method="POST")
    call(layer)
    assert passed == ["/api/v1/metadata/", "/api/v1/metrics", "/api/v1/metrics", "/api/v1/metrics",
                      "/api/v1/metrics"]


def test_without_a_long_key_the_layer_admits_nobody(monkeypatch):
    metrics = metrics_layer()
    monkeypatch.setenv("TILED_METRICS_KEY", "short")
    added = []

    class App:
        def add_middleware(self, cls, **kwargs):
            added.append(cls(None, **kwargs))

    assert "metrics key off" in metrics.attach(App())
    for header in ([], [(b"authorization", b"Apikey short")], [(b"authorization", b"Apikey None")]):
        assert not added[0].admits({"type": "http", "path": "/api/v1/metrics", "method": "GET", "headers": header})


def test_health_checks_are_labelled_and_writes_are_not(tmp_path):
    """Through Tiled's own app and metrics: /readyz and /healthz count as endpoint="health",
    a write stays "unknown" (Tiled's label for it), a read keeps Tiled's own label."""
    code = SQLITE_APP + r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from starlette.testclient import TestClient
from prometheus_client import REGISTRY
from tiled_stack import metrics, readiness
app = sqlite_app()
readiness.attach(app)
metrics.attach(app)
with TestClient(app) as client:
    for path in ("/readyz", "/healthz", "/readyz"):
        assert client.get(path).status_code == 200, path
    client.post("/api/v1/metadata/", headers={"Authorization": "Apikey k"},
                json={"structure_family": "container", "metadata": {}, "specs": [], "data_sources": []})
    client.get("/api/v1/metadata/", headers={"Authorization": "Apikey k"})
counts = {}
for metric in REGISTRY.collect():
    if metric.name == "tiled_request_duration_seconds":
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.value:
                key = sample.labels["method"] + " " + sample.labels["endpoint"]
                counts[key] = counts.get(key, 0) + sample.value
print(json.dumps({"counts": counts}))
"""
    counts = probe_tiled_stack(code)["counts"]
    assert counts.get("GET health") == 3, counts
    assert counts.get("POST unknown") == 1 and counts.get("GET metadata") == 1, counts
    assert not any(k.startswith("GET unknown") for k in counts), counts
