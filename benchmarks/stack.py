"""`make bench`: measure the running stack against one Tiled reached directly.

Configurations, in one run on the same machine:
  direct-1          one replica, its own address, no HAProxy (the baseline: what
                    upstream Tiled's compose file runs)
  direct-1-unpatched  the same on tiled-stack/tiled:<version>-unpatched, Tiled as
                    released (no patch of tiled/patches; metadata and search only)
  haproxy-1/2/3     1, 2, 3 replicas behind HAProxy (scaled live, restored after)
  auth              login and refresh latency, and a read with a user's token or key
                    against the same read with the single-user key (benchmarks/auth.py)
  arrays            detector frames written and read through HAProxy and through one
                    upstream process, against loopback (benchmarks/arrays.py)

Writes benchmarks/results/<date>.{json,md,png} (or OUT=dir). QUICK=1 is a small
profile that checks the harness works (its duration: README); its figures mean little.
"""

import asyncio
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

from benchmarks import arrays, auth, load, report, resources, workloads
from scripts import build_images, ensure_venv, scale
from scripts.lib import haproxy_stats, side_replica, timings
from scripts.lib.compose import ROOT, Stack
from scripts.lib.docker_api import backend_address, project_containers
from scripts.lib.say import Failure, note, ok, run_main, step


@dataclasses.dataclass
class Profile:
    name: str
    nodes: int
    levels: list[int]
    repeats: int
    seconds: float
    replicas: list[int]
    unpatched: bool
    bluesky: tuple[int, int]  # writers, events each
    logins: int  # sequential logins and refreshes timed
    streaming: tuple[int, float, float]  # subscribers, updates/s, seconds


DEFAULT = Profile("default", nodes=10_000, levels=[1, 4, 16], repeats=3, seconds=1.5, replicas=[1, 2, 3],
                  unpatched=True, bluesky=(4, 25), logins=30, streaming=(20, 10.0, 5.0))
QUICK = Profile("quick", nodes=300, levels=[4], repeats=1, seconds=1.0, replicas=[1, 2],
                unpatched=True, bluesky=(2, 5), logins=5, streaming=(4, 10.0, 1.0))
HTTP = ["metadata", "search", "array", "table", "append"]
UNPATCHED_HTTP = ["metadata", "search"]


def replica_urls(stack: Stack) -> list[str]:
    return [f"http://{backend_address(c)}:8000"
            for c in sorted(project_containers(stack.project, "tiled", all=False), key=lambda c: c.name)]


def haproxy_maxconn(stack: Stack) -> int:
    (haproxy,) = project_containers(stack.project, "haproxy", all=False)
    env = dict(e.split("=", 1) for e in haproxy.attrs["Config"]["Env"])
    return int(env["HAPROXY_MAXCONN_PER_REPLICA"])


def run_http(project: str, url: str, requests: dict, names: list[str], profile: Profile, label: str) -> dict:
    out = {}
    for name in names:
        points = []
        for clients in profile.levels:
            before, wall = resources.cpu_seconds(project), time.monotonic()
            samples = [asyncio.run(load.closed_loop(lambda s, rng: requests[name](s, rng, url), clients,
                                                    profile.seconds, warmup=0.3))
                       for _ in range(profile.repeats)]
            used = resources.cpu_used(before, resources.cpu_seconds(project))
            wall = time.monotonic() - wall
            point = load.summarise(samples)
            point["host_busy_pct"] = round(100 * used.pop("host_busy") / wall / (os.cpu_count() or 1))
            # CPU over the whole point (warm-ups included), per answered request.
            answered = point["requests"] * (1 + 0.3 / profile.seconds)
            point["cpu_ms_per_request"] = {k: round(1000 * v / answered, 2) for k, v in used.items()}
            points.append(point)
        out[name] = points
        top = points[-1]
        note(f"{label:17} {name:9} " + "  ".join(f"c={p['clients']}: {p['throughput']:6.1f}/s" for p in points)
             + f"  p99@{top['clients']} {top['p99_ms']:.0f} ms  5xx {sum(p['errors_5xx'] for p in points)}")
    return out


def main() -> None:
    profile = QUICK if os.environ.get("QUICK") == "1" else DEFAULT
    stack = Stack()
    if not project_containers(stack.project, "haproxy", all=False):
        raise Failure(f"project {stack.project} is not running", "start it with `make up`, then rerun `make bench`")
    if max(profile.replicas) > stack.max_replicas:
        raise Failure(f"the benchmark needs {max(profile.replicas)} replicas; TILED_MAX_REPLICAS is "
                      f"{stack.max_replicas}", f"raise TILED_MAX_REPLICAS in {stack.env_path}, then `make down && make up`")
    api_key = stack.values["TILED_SINGLE_USER_API_KEY"]
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    original = haproxy_stats.up_count(stack.stats_url)
    step(f"benchmark profile {profile.name} on project {stack.project} ({original} replicas now)")
    root = workloads.prepare(stack.local_url, api_key, profile.nodes)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = {
        "meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "profile": dataclasses.asdict(profile),
                 "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                          "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                 "haproxy_maxconn_per_replica": haproxy_maxconn(stack),
                 "patches": [p.name for p in ensure_venv.series()]},
        "timings": {k: v for k, v in timings.read().items() if k in ("images", f"up/{stack.project}")},
        "http": {}, "bluesky": {}, "streaming": {}, "resources": {}, "auth": {},
    }
    try:
        for n in profile.replicas:
            scale.scale_to(stack, n)
            urls = replica_urls(stack)
            if n == 1:
                results["resources"]["idle"] = {"memory_mib": resources.replica_memory_mib(stack.project),
                                                "pg_connections": resources.pg_connections(stack.project)}
                append_key = f"append_direct_{stamp}"
                workloads.create_append_table(root, append_key)
                requests = workloads.http_workloads(api_key, profile.nodes, append_key)
                step("direct-1: one replica at its own address, no HAProxy")
                results["http"]["direct-1"] = run_http(stack.project, urls[0], requests, HTTP, profile, "direct-1")
                results["bluesky"]["direct-1"] = workloads.bluesky_runs(urls[0], api_key, *profile.bluesky)
                results["streaming"]["direct-1"] = workloads.streaming(urls[0], urls, api_key, "stream_d1",
                                                                       *profile.streaming)
                if profile.unpatched:
                    step("direct-1-unpatched: a side replica of the unpatched image (Tiled as released)")
                    _, off_url = side_replica.start(stack.project, "bench_unpatched",
                                                    image=build_images.tiled_variant(*build_images.UNPATCHED))
                    try:
                        results["http"]["direct-1-unpatched"] = run_http(stack.project, off_url, requests,
                                                                         UNPATCHED_HTTP, profile, "direct-1-unpatched")
                    finally:
                        side_replica.remove(stack.project, "bench_unpatched")
                results["auth"] = auth.measure(stack.project, urls[0], api_key, profile.seconds, profile.repeats,
                                               profile.logins)
            label = f"haproxy-{n}"
            step(f"{label}: {n} replica(s) behind HAProxy")
            append_key = f"append_{label}_{stamp}"
            workloads.create_append_table(root, append_key)
            requests = workloads.http_workloads(api_key, profile.nodes, append_key)
            if n == max(profile.replicas):
                with resources.Sampler(stack.project) as sampler:
                    results["http"][label] = run_http(stack.project, stack.local_url, requests, HTTP, profile, label)
                results["resources"]["under_load"] = {"replicas": n, **sampler.summary()}
            else:
                results["http"][label] = run_http(stack.project, stack.local_url, requests, HTTP, profile, label)
            results["bluesky"][label] = workloads.bluesky_runs(stack.local_url, api_key, *profile.bluesky)
            if n >= 2:  # the writer on one replica, every subscriber on the others
                results["streaming"][label] = workloads.streaming(urls[0], urls[1:], api_key, f"stream_{n}",
                                                                  *profile.streaming)
    finally:
        side_replica.remove(stack.project)
        if haproxy_stats.up_count(stack.stats_url) != original:
            step(f"restoring {original} replicas")
            scale.scale_to(stack, original)
    # At the stack's own replica count, as its users meet it.
    results["arrays"] = arrays.measure(stack, api_key, quick=profile is QUICK)
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    paths = report.write(results, out_dir, stamp)
    print(report.summary(results))
    ok(f"benchmark done in {results['meta']['seconds']:.0f}s: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    run_main(main)
