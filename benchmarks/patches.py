"""`make bench-switches`: what each CPU fix is worth, measured interleaved.

Side replicas of the running stack, one per image: unpatched (Tiled as released),
patched (the whole series, the stack's own image), and one variant per CPU fix
with every patch but that one (`apply.py --without`; built here from the Tiled
image's build stage, once). The CPU fixes are the patches whose header says
`make bench-switches` measures them. In each round every replica gets the metadata
and the search workload of `make bench` in turn (4 clients, SECONDS each), so a
machine that slows down or speeds up during the run affects every setting alike.
Reports medians over ROUNDS of requests/s and Tiled CPU per request (the
container's cgroup). Writes benchmarks/results/<date>-switches.{json,md}. The
"without" images are removed at the end (the unpatched one is kept: make images
builds it).
"""

import asyncio
import datetime
import json
import os
import statistics
from pathlib import Path

from benchmarks import load, resources, workloads
from scripts import build_images, ensure_venv
from scripts.lib import side_replica
from scripts.lib.compose import ROOT, Stack
from scripts.lib.docker_api import client, project_containers, running
from scripts.lib.say import Failure, note, ok, run_main, step

WORKLOADS = ["metadata", "search"]
CLIENTS = 4


def cpu_fixes() -> list[str]:
    """The patches this benchmark measures: those whose header names it."""
    return [p.name for p in ensure_venv.series() if "make bench-switches" in p.read_text().split("\n---\n")[0]]


def settings(patched_image: str) -> dict[str, str]:
    """Setting name → image: unpatched, patched, and the patched image without each CPU fix."""
    images = {"unpatched": build_images.tiled_variant(*build_images.UNPATCHED), "patched": patched_image}
    for name in cpu_fixes():
        images[f"without {name[:4]}"] = build_images.tiled_variant(f"without-{name[:4]}", f"--without {name}")
    return images


def measure(container, url: str, request, seconds: float) -> tuple[float, float]:
    """(requests/s, Tiled CPU ms per request) of one closed-loop burst."""
    asyncio.run(load.closed_loop(lambda s, rng: request(s, rng, url), CLIENTS, 1.0, warmup=0))  # warm up
    before = resources.container_cpu_s(container)
    sample = asyncio.run(load.closed_loop(lambda s, rng: request(s, rng, url), CLIENTS, seconds, warmup=0))
    cpu = resources.container_cpu_s(container) - before
    done = len(sample.latencies_ms)
    if sample.failures or set(sample.statuses) != {200}:
        raise Failure(f"a request failed: {dict(sample.statuses)} {dict(sample.failures)}",
                      "look at `make logs SERVICE=tiled`")
    return done / seconds, cpu / max(done, 1) * 1000


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "5"))
    stack = Stack()
    if not project_containers(stack.project, "haproxy", all=False):
        raise Failure(f"project {stack.project} is not running", "start it with `make up`, then rerun")
    api_key = stack.values["TILED_SINGLE_USER_API_KEY"]
    workloads.prepare(stack.local_url, api_key, 10_000)
    requests = workloads.http_workloads(api_key, 10_000, "unused")
    step(f"the images to compare: unpatched, patched, and without each of {', '.join(cpu_fixes())}")
    images = settings(running(stack.project, "tiled").attrs["Config"]["Image"])
    step(f"starting {len(images)} side replicas: {', '.join(images)}")
    sides = {name: side_replica.start(stack.project, f"switches_{i}", image=image)
             for i, (name, image) in enumerate(images.items())}
    measured = {name: {w: [] for w in WORKLOADS} for name in sides}
    try:
        for r in range(rounds):
            step(f"round {r + 1} of {rounds}: {CLIENTS} clients, {seconds:g} s per setting and workload")
            for w in WORKLOADS:
                for name, (container, url) in sides.items():
                    rate, cpu = measure(container, url, requests[w], seconds)
                    measured[name][w].append([round(rate, 1), round(cpu, 2)])
                    note(f"{w:9} {name:28} {rate:6.1f} req/s  {cpu:6.2f} ms CPU/request")
    finally:
        side_replica.remove(stack.project)
        for name, image in images.items():  # ≈ 1 GB each; rebuilt from the cached stage next time
            if name.startswith("without "):
                client().images.remove(image)
        build_images.remove_superseded_images()  # and the build stages they left
    med = {name: {w: [statistics.median(x[i] for x in v) for i in (0, 1)] for w, v in ws.items()}
           for name, ws in measured.items()}
    lines = ["| setting | " + " | ".join(f"{w} req/s | {w} ms CPU" for w in WORKLOADS) + " |",
             "|---|" + "---|" * (2 * len(WORKLOADS))]
    for name, ws in med.items():
        cells = []
        for w in WORKLOADS:
            rate, cpu = ws[w]
            cells += [f"{rate:.1f} ({rate / med['unpatched'][w][0]:.2f}×)", f"{cpu:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# CPU fixes, interleaved ({stamp})\n\nMedians of {rounds} rounds, {CLIENTS} clients, "
              f"{seconds:g} s per setting and workload; ratios against `unpatched`.\n\n")
    (out / f"{stamp}-switches.md").write_text(header + "\n".join(lines) + "\n")
    (out / f"{stamp}-switches.json").write_text(json.dumps({"rounds": measured, "medians": med}, indent=1) + "\n")
    print("\n".join(lines))
    ok(f"written {out / f'{stamp}-switches.md'}")


if __name__ == "__main__":
    run_main(main)
