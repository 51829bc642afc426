"""One image, four services: `entrypoint.py prometheus | postgres-exporter | redis-exporter |
volumes-exporter`, plus `check-config` (the build runs it) and `health PORT PATH` (the
healthchecks). Each reads its settings from the environment (compose.yaml) and keeps
passwords off command lines. Standard library only.
"""

import os
import re
import socket
import string
import subprocess
import sys

CONFIG = os.environ.get("MONITORING_SOURCE_DIR") or "/etc/prometheus"  # the fast tier: monitoring/
RUN_DIR = os.environ.get("MONITORING_CONFIG_DIR") or "/tmp/prometheus"
DEFAULTS = {"PROMETHEUS_SCRAPE_INTERVAL": "15s", "PROMETHEUS_RETENTION_TIME": "15d",
            "PROMETHEUS_RETENTION_SIZE": "2GB", "TILED_REPLICAS": "3", "COMPOSE_PROJECT_NAME": "tiled-stack"}
CHECKS = {
    # The dashboard and HAProxyQueueing read [1m] windows: at least two scrapes in each.
    "PROMETHEUS_SCRAPE_INTERVAL": (r"([1-9]|[12][0-9]|30)s", "a duration from 1s to 30s, such as 15s"),
    "PROMETHEUS_RETENTION_TIME": (r"[1-9][0-9]*[mhdwy]", "a duration such as 15d"),
    "PROMETHEUS_RETENTION_SIZE": (r"[1-9][0-9]*(B|KB|MB|GB|TB)", "a size such as 2GB"),
    "TILED_REPLICAS": (r"[1-9][0-9]*", "a whole number of replicas"),
}


def fail(message: str) -> None:
    sys.exit(f"monitoring: {message}")


def setting(name: str) -> str:
    value = os.environ.get(name) or DEFAULTS.get(name, "")
    pattern, meaning = CHECKS.get(name, (None, ""))
    if pattern and not re.fullmatch(pattern, value):
        fail(f"{name}={value!r} is not {meaning}; fix it in .env, then `make up`")
    return value


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def render() -> str:
    """prometheus.yml with this container's settings, the metrics key in a private file,
    and the desired replica count as a rule; returns the rendered file's path."""
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    key = os.environ.get("TILED_METRICS_KEY") or ""
    if len(key) < 32:
        fail("TILED_METRICS_KEY is unset or shorter than 32 characters; `make up` generates it in .env")
    write_private(f"{RUN_DIR}/metrics.key", key)
    write_private(f"{RUN_DIR}/stack.rules.yml", (
        "# The replica count .env asks for (TILED_REPLICAS), for the replica alerts.\n"
        "groups:\n  - name: tiled-stack-settings\n    rules:\n"
        f"      - record: tiled_stack_desired_replicas\n        expr: vector({setting('TILED_REPLICAS')})\n"))
    values = {name: setting(name) for name in ("PROMETHEUS_SCRAPE_INTERVAL", "COMPOSE_PROJECT_NAME")}
    with open(f"{CONFIG}/prometheus.yml") as template:
        try:
            text = string.Template(template.read()).substitute(values, RUN_DIR=RUN_DIR, CONFIG_DIR=CONFIG)
        except KeyError as missing:
            fail(f"prometheus.yml names {missing}, which entrypoint.py does not set")
    managers = [m.strip() for m in re.split(r"[\s,]+", os.environ.get("PROMETHEUS_ALERTMANAGERS", "")) if m.strip()]
    for manager in managers:
        if not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]+", manager):
            fail(f"PROMETHEUS_ALERTMANAGERS entry {manager!r} is not host:port")
    if managers:
        text += ("\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ["
                 + ", ".join(f'"{m}"' for m in managers) + "]\n")
    write_private(f"{RUN_DIR}/prometheus.yml", text)
    return f"{RUN_DIR}/prometheus.yml"


def check_config() -> str:
    for name in CHECKS:
        setting(name)
    config = render()
    for args in (["check", "config", config], ["check", "rules", f"{CONFIG}/alerts.yml"]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True)
        if done.returncode:
            fail(f"`promtool {' '.join(args)}` refused it:\n{done.stdout}{done.stderr}")
    return config


def prometheus() -> None:
    config = check_config()
    print(f"monitoring: Prometheus, scraping every {setting('PROMETHEUS_SCRAPE_INTERVAL')}, keeping "
          f"{setting('PROMETHEUS_RETENTION_TIME')} or {setting('PROMETHEUS_RETENTION_SIZE')}", flush=True)
    os.execvp("prometheus", [
        "prometheus", f"--config.file={config}", "--storage.tsdb.path=/prometheus",
        f"--storage.tsdb.retention.time={setting('PROMETHEUS_RETENTION_TIME')}",
        f"--storage.tsdb.retention.size={setting('PROMETHEUS_RETENTION_SIZE')}",
        f"--web.console.templates={CONFIG}/consoles", f"--web.console.libraries={CONFIG}/console_libraries",
        "--web.listen-address=:9090"])


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        fail(f"{name} is empty; `make up` generates it in .env")
    return value


def postgres_exporter() -> None:
    # As role tiled_monitor (pg_monitor only), made by postgres/monitor_role.py.
    password = required("MONITORING_DB_PASSWORD")
    os.environ["DATA_SOURCE_NAME"] = (f"postgresql://tiled_monitor:{password}@postgres:5432/postgres"
                                      "?sslmode=disable&application_name=tiled_monitor")
    os.execvp("prometheus-postgres-exporter", ["prometheus-postgres-exporter", "--web.listen-address=:9187"])


def redis_exporter() -> None:
    # As ACL user tiled_monitor (INFO and little else), made by redis/entrypoint.py.
    os.environ.update(REDIS_ADDR="redis://redis:6379", REDIS_USER="tiled_monitor",
                      REDIS_PASSWORD=required("MONITORING_REDIS_PASSWORD"))
    os.execvp("prometheus-redis-exporter", ["prometheus-redis-exporter", "--web.listen-address=:9121"])


def volumes_exporter() -> None:
    # Free space of the volumes mounted under /volumes, and the scripts' files in /metrics.
    os.execvp("prometheus-node-exporter", [
        "prometheus-node-exporter", "--web.listen-address=:9100", "--collector.disable-defaults",
        "--collector.filesystem", "--collector.filesystem.mount-points-exclude=^/(dev|proc|sys|etc|metrics)($|/)",
        "--collector.textfile", "--collector.textfile.directory=/metrics"])


def health(port: str, path: str) -> None:
    """Exit 0 if http://127.0.0.1:PORT/PATH answers 200 (plain sockets: the quickest start)."""
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=4) as conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            status_line = conn.makefile("rb").readline().decode()
    except OSError as err:
        sys.exit(f"unhealthy: {err}")
    sys.exit(0 if status_line.split()[1:2] == ["200"] else f"unhealthy: {status_line.strip()}")


COMMANDS = {"prometheus": prometheus, "check-config": lambda: print(f"monitoring: {check_config()} is valid"),
            "postgres-exporter": postgres_exporter, "redis-exporter": redis_exporter,
            "volumes-exporter": volumes_exporter}

if __name__ == "__main__":
    if sys.argv[1:2] == ["health"] and len(sys.argv) == 4:
        health(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] in COMMANDS:
        COMMANDS[sys.argv[1]]()
    else:
        fail(f"usage: entrypoint.py {' | '.join(COMMANDS)} | health PORT PATH")
