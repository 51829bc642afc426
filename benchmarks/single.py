"""`make bench-single`: what the DuckDB pool fix (patch 0017) costs the single process on table reads.

Two builds of the host's Tiled, each run as `make serve` runs it (SQLite catalog, DuckDB
tables, fresh temporary storage):
  with-0017     the venv's Tiled: the whole upstream-fix series
  without-0017  the same series with 0017 left out: one DuckDB connection shared by
                every thread, as Tiled 0.2.20 ships it
Workload: the `make bench` table read (partition 0 of a 1000-row × 6-column appendable
table, as Arrow) by 1, 4 and 16 closed-loop clients, ROUNDS rounds (default 3) of
SECONDS s (default 3) per point, the two builds interleaved round by round so that a
slow moment of the machine hits both. A build that crashes is restarted for the next
point and the crash is reported. Writes benchmarks/results/<date>-single.{json,md}
(OUT=dir elsewhere).
"""

import asyncio
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import load, workloads
from scripts.lib.compose import ROOT
from scripts.lib.say import Failure, note, ok, run_main, step
from scripts.serve import config, free_port

FIX = "0017-duckdb-connection-per-thread.patch"
LEVELS = [1, 4, 16]


class Server:
    """`tiled serve config` on a fresh temporary storage, with the given Tiled on PYTHONPATH."""

    def __init__(self, name: str, pythonpath: str | None, work: Path):
        self.name, self.pythonpath, self.work = name, pythonpath, work
        self.api_key = secrets.token_hex(16)
        self.process = None

    def start(self) -> None:
        data = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.work))
        (data / "data").mkdir()
        self.port = free_port()
        path = data / "config.yml"
        path.write_text(json.dumps(config(data, self.api_key, [], "memory", "127.0.0.1", self.port)))
        env = {**os.environ, **({"PYTHONPATH": self.pythonpath} if self.pythonpath else {})}
        self.log = (data / "tiled.log").open("w")
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "tiled"), "serve", "config", str(path)],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    workloads.prepare(self.url, self.api_key, nodes=0)
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
            if self.process.poll() is not None:
                break
        raise Failure(f"{self.name}: Tiled did not start (log: {self.log.name})", "read the log above")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                note(f"{self.name} died (exit {self.process.returncode}): starting it again")
            self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def variant_without_fix(work: Path) -> Path:
    """The unpatched releases kept by `make venv`, with the series minus 0017 applied."""
    site = work / "without-0017"
    for name in ("tiled", "strawberry"):
        shutil.copytree(ROOT / ".venv" / "upstream" / name, site / name)
    done = subprocess.run([sys.executable, str(ROOT / "tiled" / "patches" / "apply.py"), str(site), "--without", FIX],
                          capture_output=True, text=True)
    if done.returncode:
        raise Failure(f"could not build the variant without {FIX}:\n{done.stderr}", "run `make venv`, then rerun")
    return site


def measure(server: Server, clients: int, seconds: float) -> dict:
    server.ensure_running()
    request = workloads.http_workloads(server.api_key, 1, "unused")["table"]
    sample = asyncio.run(load.closed_loop(lambda s, rng: request(s, rng, server.url), clients, seconds, warmup=0.5))
    died = server.process.poll() is not None
    # Only right answers count: a 500 is often faster than a read.
    return {"throughput": sample.statuses.get(200, 0) / sample.seconds, "p50_ms": sample.percentile(50),
            "requests": sample.requests,
            "errors_5xx": sample.errors_5xx, "failures": sum(sample.failures.values()), "died": died}


def median_or_dash(values: list[float]) -> str:
    answered = sorted(v for v in values if v == v)  # NaN: no answer at all in that round
    return f"{answered[len(answered) // 2]:.0f}" if answered else "–"


def markdown(results: dict) -> str:
    lines = [f"# The single process: table reads with and without patch 0017 ({results['date']})", "",
             f"Machine: {results['machine']}. {results['rounds']} rounds × {results['seconds']} s per point, "
             "the two builds interleaved; median throughput, and the min–max of the rounds. p50 is of "
             "every answer; \"no answer\" counts refused or reset connections (a dead server answers "
             "them fast).", "",
             "| clients | build | table reads/s answered 200 (min–max) | p50 ms | 5xx | no answer | crashes |", "|---|---|---|---|---|---|---|"]
    for clients in results["levels"]:
        for name in ("with-0017", "without-0017"):
            runs = results["points"][name][str(clients)]
            rates = sorted(r["throughput"] for r in runs)
            lines.append(f"| {clients} | {name} | {rates[len(rates) // 2]:.0f} ({rates[0]:.0f}–{rates[-1]:.0f}) | "
                         f"{median_or_dash([r['p50_ms'] for r in runs])} | "
                         f"{sum(r['errors_5xx'] for r in runs)} | {sum(r['failures'] for r in runs)} | "
                         f"{sum(r['died'] for r in runs)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    rounds = int(os.environ.get("ROUNDS") or 3)
    seconds = float(os.environ.get("SECONDS") or 3)
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    if not (ROOT / ".venv" / "upstream" / "tiled").is_dir():
        raise Failure("no unpatched Tiled in .venv/upstream", "run `make venv`, then rerun")
    work = Path(tempfile.mkdtemp(prefix="bench-single-"))
    step(f"building the variant without {FIX}")
    servers = [Server("with-0017", None, work), Server("without-0017", str(variant_without_fix(work)), work)]
    points = {s.name: {str(c): [] for c in LEVELS} for s in servers}
    try:
        for r in range(rounds):
            for clients in LEVELS:
                for server in servers if r % 2 == 0 else servers[::-1]:
                    step(f"round {r + 1}/{rounds}: {server.name}, {clients} clients, {seconds:g} s")
                    point = measure(server, clients, seconds)
                    points[server.name][str(clients)].append(point)
                    note(f"{point['throughput']:.0f} reads/s, 5xx {point['errors_5xx']}, "
                         f"no answer {point['failures']}{', DIED' if point['died'] else ''}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = {"date": stamp, "machine": f"{platform.node()}, {os.cpu_count()} cores", "rounds": rounds,
               "seconds": seconds, "levels": LEVELS, "points": points}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stamp}-single.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{stamp}-single.md").write_text(markdown(results))
    print(markdown(results))
    ok(f"written to {out_dir / stamp}-single.{{json,md}}")


if __name__ == "__main__":
    run_main(main)
