"""The stack's Prometheus, from the scripts: its targets, a query, the numbers the scripts
write for it (node exporter's textfile format, in .state/<project>/metrics), and removing
the monitoring containers when TILED_MONITORING is off again."""

import json
import os
import urllib.parse
import urllib.request

import yaml

from scripts.lib import wait
from scripts.lib.compose import MONITORING, ROOT, Stack, profile_services
from scripts.lib.docker_api import project_containers
from scripts.lib.say import Failure, ok, step

# Prometheus's scrape jobs, as monitoring/prometheus.yml names them.
JOBS = tuple(job["job_name"] for job in yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
             ["scrape_configs"])
TARGETS_DEADLINE_S = 120


def api(stack: Stack, path: str, **params) -> dict:
    url = f"{stack.prometheus_url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["data"]
    except OSError as err:
        raise Failure(f"Prometheus at {stack.prometheus_url} does not answer ({err})",
                      "check `make status` and `make logs SERVICE=prometheus`") from None


def query(stack: Stack, promql: str) -> list[dict]:
    return api(stack, "query", query=promql)["result"]


def scalar(stack: Stack, promql: str) -> float | None:
    result = query(stack, promql)
    return float(result[0]["value"][1]) if result else None


def target_problems(stack: Stack, replicas: int) -> list[str]:
    active = api(stack, "targets", state="active")["activeTargets"]
    found = [f"{t['labels']['job']} {t['labels']['instance']}: {t['health']} {t.get('lastError', '')}".strip()
             for t in active if t["health"] != "up"]
    jobs = {t["labels"]["job"] for t in active}
    found += [f"no {job} target" for job in JOBS if job not in jobs]
    tiled = sum(t["labels"]["job"] == "tiled" and t["health"] == "up" for t in active)
    if tiled != replicas:
        found.append(f"{tiled}/{replicas} replicas scraped")
    return found


def wait_for_targets(stack: Stack, replicas: int, deadline_s: float = TARGETS_DEADLINE_S) -> None:
    step(f"waiting for Prometheus to scrape every target ({replicas} replicas)")
    wait.until(lambda: target_problems(stack, replicas), deadline_s, "Prometheus's targets not all UP",
               f"open {stack.prometheus_url}/targets; `make logs SERVICE=<exporter>` shows why")
    ok(f"Prometheus at {stack.prometheus_url}: every target UP")


def remove_if_off(stack: Stack) -> None:
    """With TILED_MONITORING off, remove the containers it left running (data volume kept)."""
    if stack.monitoring:
        return
    left = [c for service in profile_services(MONITORING) for c in project_containers(stack.project, service)]
    if not left:
        return
    step(f"monitoring is off: removing {', '.join(sorted(c.name for c in left))} (its data volume is kept)")
    for container in left:
        container.stop(timeout=30)  # Prometheus closes its database cleanly
        container.remove()


def write_metric(stack: Stack, name: str, help_text: str, value: float) -> None:
    """One gauge in .state/<project>/metrics/<name>.prom, replaced atomically (the exporter
    never reads half a file). Written whether or not monitoring is on."""
    stack.metrics_dir.mkdir(parents=True, exist_ok=True)
    target = stack.metrics_dir / f"{name}.prom"
    partial = target.with_suffix(".prom.partial")
    partial.write_text(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value}\n")
    os.chmod(partial, 0o644)
    os.replace(partial, target)


def health_line(stack: Stack) -> str:
    """Requests/s, 5xx/s (and their share) through HAProxy's replica backends, and Tiled's p99 without
    health checks, over 5 minutes; and the alerts firing."""
    backends = 'proxy=~"tiled_http|tiled_stream"'
    rate = scalar(stack, f"sum(rate(haproxy_backend_http_requests_total{{{backends}}}[5m]))")
    errors = scalar(stack, f'sum(rate(haproxy_backend_http_responses_total{{{backends},code="5xx"}}[5m]))')
    p99 = scalar(stack, 'histogram_quantile(0.99, sum by (le) (rate('
                        'tiled_request_duration_seconds_bucket{endpoint!="health"}[5m])))')
    firing = [r["metric"]["alertname"] for r in query(stack, 'ALERTS{alertstate="firing"}')]

    def number(value, fmt):
        return "n/a" if value is None or value != value else fmt.format(value)

    share = errors / rate if rate and errors is not None else None
    return (f"last 5 min: {number(rate, '{:.1f}')} requests/s, {number(errors, '{:.2f}')} 5xx/s "
            f"({number(share and share * 100, '{:.1f}')} %), "
            f"p99 {number(p99 and p99 * 1000, '{:.0f}')} ms; {len(firing)} alert(s) firing"
            + (f": {', '.join(sorted(set(firing)))}" if firing else ""))
