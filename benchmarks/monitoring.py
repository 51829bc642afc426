"""`make bench-monitoring`: what monitoring costs the machine (TILED_MONITORING=on, after `make up`).

Each monitoring service's CPU (cgroup counters, % of one core) and memory (Docker's stats,
without page cache) over an idle window, then over a window of steady metadata reads
through HAProxy; what one replica's scrape weighs (bytes, samples, time); what Prometheus
stores (samples/s, series) and so its disk use per day. SECONDS=… sets each window
(default 180). Writes benchmarks/results/<date>-monitoring.{json,md} (or OUT=dir).
"""

import datetime
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx

from benchmarks.load import Background
from benchmarks.resources import container_cpu_s
from scripts import env_file
from scripts.lib import monitoring
from scripts.lib.compose import MONITORING, ROOT, Stack, profile_services
from scripts.lib.docker_api import backend_address, project_containers
from scripts.lib.say import Failure, ok, run_main, step

BYTES_PER_SAMPLE = (1.3, 2.5)  # Prometheus's TSDB on disk, compressed: its documented 1-2 bytes, and room


class Reads(Background):
    """Metadata reads through HAProxy from 4 threads, as fast as the stack answers."""

    threads_wanted = 4

    def __init__(self, url: str, key: str):
        super().__init__()
        self.url, self.key = url, key
        self.count, self.failed = 0, 0
        self.lock = threading.Lock()

    def run(self):
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Apikey {self.key}"}, timeout=30) as http:
            while not self.stopping.is_set():
                status = http.get("/api/v1/metadata/").status_code
                with self.lock:
                    self.count += 1
                    self.failed += status != 200


def services(stack: Stack) -> dict[str, object]:
    return {service: c for service in profile_services(MONITORING)
            for c in project_containers(stack.project, service, all=False)}


def memory_mib(container) -> float:
    stats = container.stats(stream=False, one_shot=True)["memory_stats"]
    return round((stats.get("usage", 0) - stats.get("stats", {}).get("inactive_file", 0)) / 2**20, 1)


def window(stack: Stack, seconds: float, load: Background | None = None) -> dict:
    running = services(stack)
    before = {s: container_cpu_s(c) for s, c in running.items()}
    memory = {s: [] for s in running}
    started = time.monotonic()
    if load:
        load.__enter__()
    try:
        while time.monotonic() - started < seconds:
            for s, c in running.items():
                memory[s].append(memory_mib(c))
            time.sleep(10)
    finally:
        if load:
            load.__exit__(None, None, None)
    took = time.monotonic() - started
    return {"seconds": round(took), **({"requests_per_s": round(load.count / took, 1), "failed": load.failed}
                                       if load else {}),
            "services": {s: {"cpu_percent": round(100 * (container_cpu_s(c) - before[s]) / took, 2),
                             "memory_mib": [min(memory[s]), max(memory[s])]} for s, c in running.items()}}


def scrape_cost(stack: Stack, key: str) -> dict:
    address = backend_address(project_containers(stack.project, "tiled", all=False)[0])
    times, body = [], b""
    with httpx.Client(headers={"Authorization": f"Apikey {key}"}, timeout=30) as http:
        for _ in range(20):
            started = time.perf_counter()
            body = http.get(f"http://{address}:8000/api/v1/metrics").content
            times.append(1000 * (time.perf_counter() - started))
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"bytes": len(body), "samples": samples, "p50_ms": round(statistics.median(times), 1),
            "kept_samples": monitoring.scalar(stack, 'avg(scrape_samples_post_metric_relabeling{job="tiled"})'),
            "prometheus_scrape_ms": round(1000 * (monitoring.scalar(
                stack, 'avg(avg_over_time(scrape_duration_seconds{job="tiled"}[5m]))') or 0), 1)}


def markdown(results: dict) -> str:
    lines = [f"# Monitoring's cost, {results['date']}", "",
             f"{results['replicas']} replicas, scrapes every {results['scrape_interval']}; "
             f"idle {results['idle']['seconds']} s, then {results['load']['seconds']} s of metadata reads through "
             f"HAProxy at {results['load']['requests_per_s']} requests/s ({results['load']['failed']} failed).", "",
             "| service | CPU idle (% of one core) | CPU under load | memory (MiB) |", "|---|---|---|---|"]
    total = [0.0, 0.0, 0.0, 0.0]
    for service in sorted(results["idle"]["services"]):
        idle, load = results["idle"]["services"][service], results["load"]["services"][service]
        low, high = min(idle["memory_mib"][0], load["memory_mib"][0]), max(idle["memory_mib"][1], load["memory_mib"][1])
        lines.append(f"| {service} | {idle['cpu_percent']:.2f} % | {load['cpu_percent']:.2f} % | {low:.0f}–{high:.0f} |")
        total = [total[0] + idle["cpu_percent"], total[1] + load["cpu_percent"], total[2] + low, total[3] + high]
    lines.append(f"| all | {total[0]:.2f} % | {total[1]:.2f} % | {total[2]:.0f}–{total[3]:.0f} |")
    scrape, tsdb = results["scrape"], results["tsdb"]
    lines += ["", f"One replica's scrape: {scrape['bytes'] / 1024:.0f} KiB, {scrape['samples']} samples "
              f"({scrape['kept_samples']:.0f} kept after the drop rules), {scrape['p50_ms']} ms p50 from the host, "
              f"{scrape['prometheus_scrape_ms']} ms on average as Prometheus times it.",
              f"Prometheus appends {tsdb['samples_per_s']:.0f} samples/s to {tsdb['head_series']:.0f} series: "
              f"≈ {tsdb['mib_per_day'][0]:.0f}–{tsdb['mib_per_day'][1]:.0f} MiB a day on disk "
              f"(at 1.3–2.5 bytes a sample)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    stack = Stack()
    if not stack.monitoring:
        raise Failure("monitoring is off in this stack", "set TILED_MONITORING=on in .env, `make up`, then rerun")
    values = env_file.parse(stack.env_path.read_text())
    seconds = float(os.environ.get("SECONDS") or 180)
    monitoring.wait_for_targets(stack, len(project_containers(stack.project, "tiled", all=False)))
    step(f"idle: {seconds:.0f} s")
    idle = window(stack, seconds)
    step(f"under load (metadata reads through HAProxy): {seconds:.0f} s")
    load = window(stack, seconds, Reads(stack.local_url, values["TILED_SINGLE_USER_API_KEY"]))
    step("one replica's scrape, and Prometheus's storage")
    samples_per_s = monitoring.scalar(stack, "rate(prometheus_tsdb_head_samples_appended_total[5m])") or 0
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "replicas": len(project_containers(stack.project, "tiled", all=False)),
        "scrape_interval": values.get("PROMETHEUS_SCRAPE_INTERVAL") or "15s",
        "idle": idle, "load": load, "scrape": scrape_cost(stack, values["TILED_METRICS_KEY"]),
        "tsdb": {"samples_per_s": samples_per_s,
                 "head_series": monitoring.scalar(stack, "prometheus_tsdb_head_series") or 0,
                 "mib_per_day": [samples_per_s * 86400 * b / 2**20 for b in BYTES_PER_SAMPLE]},
    }
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}-monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{stamp}-monitoring.md").write_text(markdown(results))
    print(markdown(results))
    ok(f"written: {out_dir / f'{stamp}-monitoring.md'}")


if __name__ == "__main__":
    run_main(main)
