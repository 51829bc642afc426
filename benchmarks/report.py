"""Turn one benchmark run into JSON, a Markdown report, a PNG plot and a short summary."""

import json
from pathlib import Path

from benchmarks import arrays

BASELINE = "direct-1"
READS = ["metadata", "search", "array", "table"]


def peak(points: list[dict]) -> dict:
    """The point with the highest throughput: the configuration's capacity."""
    return max(points, key=lambda p: p["throughput"])


def at(points: list[dict], clients: int) -> dict | None:
    return next((p for p in points if p["clients"] == clients), None)


def ratios(results: dict) -> dict:
    """config → workload → peak throughput / the baseline's peak throughput."""
    http = results["http"]
    base = http.get(BASELINE, {})
    out = {}
    for config, workloads in http.items():
        out[config] = {w: peak(points)["throughput"] / peak(base[w])["throughput"]
                       for w, points in workloads.items() if w in base and peak(base[w])["throughput"]}
    return out


def targets(results: dict) -> list[dict]:
    http, found = results["http"], []
    base = http.get(BASELINE, {})
    if "haproxy-1" in http:
        losses = [1 - peak(http["haproxy-1"][w])["throughput"] / peak(base[w])["throughput"] for w in READS]
        found.append({"target": "HAProxy at 1 replica: < 5 % peak throughput lost (read workloads, worst)",
                      "measured": f"{100 * max(losses):.1f} %", "met": max(losses) < 0.05})
        lowest = min(p["clients"] for p in base["metadata"])
        added = [at(http["haproxy-1"][w], lowest)["p50_ms"] - at(base[w], lowest)["p50_ms"] for w in READS]
        found.append({"target": f"HAProxy at 1 replica: < 1 ms added p50 ({lowest} client(s), worst)",
                      "measured": f"{max(added):+.2f} ms", "met": max(added) < 1.0})
    if "haproxy-2" in http:
        gains = {w: peak(http["haproxy-2"][w])["throughput"] / peak(base[w])["throughput"] for w in READS}
        found.append({"target": "2 replicas ≥ 1.7× one replica, peak throughput (read workloads, worst)",
                      "measured": ", ".join(f"{w} {g:.2f}×" for w, g in gains.items()),
                      "met": min(gains.values()) >= 1.7})
    for config, stream in results["streaming"].items():
        if config == BASELINE:
            continue
        found.append({"target": f"streaming across replicas ({config}): p99 < 100 ms at "
                                f"{stream['rate_hz']:.0f}/s with {stream['subscribers']} subscribers, none lost",
                      "measured": f"p99 {stream['p99_ms']:.1f} ms, {stream['delivered']}/{stream['expected']} delivered",
                      "met": stream["p99_ms"] < 100 and stream["delivered"] == stream["expected"]})
    if "direct-1-unpatched" in http:
        gains = {w: peak(base[w])["throughput"] / peak(http["direct-1-unpatched"][w])["throughput"]
                 for w in http["direct-1-unpatched"]}
        found.append({"target": "patched vs unpatched image: ≥ 1.6× requests/s per replica (metadata GET, search)",
                      "measured": ", ".join(f"{w} {g:.2f}×" for w, g in gains.items()),
                      "met": min(gains.values()) >= 1.6})
    errors = sum(p["errors_5xx"] + sum(p["failures"].values()) for w in http.values() for ps in w.values() for p in ps)
    found.append({"target": "no 5xx and no failed request at any load level", "measured": f"{errors}",
                  "met": errors == 0})
    return found


def markdown(results: dict) -> str:
    meta, http = results["meta"], results["http"]
    lines = [f"# Benchmark {meta['date']} (profile {meta['profile']['name']})", "",
             f"Host: {meta['host']['cpus']} cores, {meta['host']['memory_gib']} GiB. Load generator on the same host. "
             f"Each point: {meta['profile']['repeats']} runs of {meta['profile']['seconds']} s, median "
             f"(throughput spread min–max). HAProxy maxconn per replica: {meta['haproxy_maxconn_per_replica']}. "
             f"Run took {meta['seconds']:.0f} s.", "", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in targets(results)]
    lines += ["", f"## Peak throughput against {BASELINE} (best client count of each)", "",
              "| configuration | " + " | ".join(HTTP_ORDER) + " |", "|---|" + "---|" * len(HTTP_ORDER)]
    for config, by in ratios(results).items():
        lines.append(f"| {config} | " + " | ".join(f"{by[w]:.2f}×" if w in by else "" for w in HTTP_ORDER) + " |")
    lines += ["", "## Every point", "",
              "| configuration | workload | clients | req/s (spread) | p50 ms | p95 ms | p99 ms | 5xx "
              "| CPU ms/req: tiled · postgres · haproxy · load generator | host busy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for config, workloads in http.items():
        for w, points in workloads.items():
            for p in points:
                lines.append(f"| {config} | {w} | {p['clients']} | {p['throughput']:.1f} "
                             f"({p['throughput_min']:.1f}–{p['throughput_max']:.1f}) | {p['p50_ms']:.1f} | "
                             f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors_5xx']} | {cpu_cell(p)} | "
                             f"{busy(p, results)} |")
    lines += ["", "## Where the CPU goes (haproxy-2, at each workload's peak)", "",
              "Server-side CPU per request, and what one core would serve if only the server used it.", "",
              "| workload | tiled ms | postgres ms | haproxy ms | req/s per core (projected) | req/s measured | host busy |",
              "|---|---|---|---|---|---|---|", *per_core(results)]
    lines += ["", "## Bluesky runs through TiledWriter (batch_size=1)", "",
              "| configuration | writers | events | stored | events/s | runs/s |", "|---|---|---|---|---|---|"]
    for config, b in results["bluesky"].items():
        lines.append(f"| {config} | {b['writers']} | {b['events']} | {b['stored']} | {b['events_per_s']:.1f} | "
                     f"{b['runs_per_s']:.2f} |")
    lines += ["", "## Streaming: write → websocket delivery", "",
              "| configuration | subscribers | updates/s | delivered | p50 ms | p95 ms | p99 ms | max ms |",
              "|---|---|---|---|---|---|---|---|"]
    for config, s in results["streaming"].items():
        lines.append(f"| {config} | {s['subscribers']} | {s['rate_hz']:.0f} | {s['delivered']}/{s['expected']} | "
                     f"{s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} |")
    if results.get("auth"):
        a = results["auth"]
        base = a["reads"]["single-user key"]["p50_ms"]
        lines += ["", "## Authentication (benchmarks/auth.py: a side replica with TILED_AUTH=ldap, one client)", "",
                  f"- Login (LDAP bind, session, tokens): p50 {a['login']['p50_ms']} ms, p95 {a['login']['p95_ms']} ms "
                  f"({a['login']['n']} in a row); refresh: p50 {a['refresh']['p50_ms']} ms, p95 {a['refresh']['p95_ms']} ms.",
                  "", "| GET /api/v1/metadata/ with | p50 ms | added p50 ms | req/s |", "|---|---|---|---|"]
        lines += [f"| {label} | {p['p50_ms']:.1f} | {p['p50_ms'] - base:+.1f} | {p['throughput']:.1f} |"
                  for label, p in a["reads"].items()]
    res = results["resources"]
    if results.get("arrays"):
        lines += arrays.markdown(results["arrays"])
    lines += ["", "## Resources", ""]
    if "idle" in res:
        mem = res["idle"]["memory_mib"]
        conns = [sum(db.values()) for addr, db in res["idle"]["pg_connections"].items() if addr != "local"]
        lines.append(f"- Idle, 1 replica: memory {', '.join(f'{v:.0f} MiB' for v in mem.values())}; "
                     f"PostgreSQL connections per replica {conns}.")
    if "under_load" in res:
        u = res["under_load"]
        lines.append(f"- Under load ({u['replicas']} replicas, every HTTP workload): peak memory "
                     f"{', '.join(f'{v:.0f}' for v in u['memory_peak_mib'].values())} MiB; PostgreSQL connections "
                     f"per replica max {u['pg_connections_per_replica_max']}, median "
                     f"{u['pg_connections_per_replica_median']} ({u['samples']} samples).")
    for name, t in results["timings"].items():
        lines.append(f"- Last `{name.split('/')[0]}` here: {t['seconds']} s at {t['at']} "
                     f"({', '.join(f'{k}={v}' for k, v in t.items() if k not in ('seconds', 'at'))}).")
    return "\n".join(lines) + "\n"


HTTP_ORDER = ["metadata", "search", "array", "table", "append"]


def cpu_cell(p: dict) -> str:
    cpu = p.get("cpu_ms_per_request", {})
    tiled = cpu.get("tiled", 0) + cpu.get("tiled-side", 0)
    return (f"{tiled:.1f} · {cpu.get('postgres', 0):.1f} · {cpu.get('haproxy', 0):.1f} · "
            f"{p['client_cpu_per_request_ms']:.1f}")


def busy(p: dict, results: dict) -> str:
    """Share of all the host's cores that was busy during the point (anything running)."""
    return f"{p['host_busy_pct']} %" if "host_busy_pct" in p else ""


def per_core(results: dict) -> list[str]:
    """Requests/s one core could serve per workload: 1 / (every server-side CPU ms per request)."""
    lines = []
    config = "haproxy-2" if "haproxy-2" in results["http"] else BASELINE
    for w, points in results["http"].get(config, {}).items():
        p = peak(points)
        cpu = p.get("cpu_ms_per_request", {})
        server = sum(cpu.get(k, 0) for k in ("tiled", "postgres", "haproxy", "redis"))
        if server:
            lines.append(f"| {w} | {cpu.get('tiled', 0):.1f} | {cpu.get('postgres', 0):.1f} | "
                         f"{cpu.get('haproxy', 0):.1f} | {1000 / server:.0f} | {p['throughput']:.0f} | "
                         f"{busy(p, results)} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = results["http"]
    names = [w for w in HTTP_ORDER if any(w in c for c in http.values())]
    colors = {config: f"C{i}" for i, config in enumerate(http)}  # one colour per configuration everywhere
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for col, w in enumerate(names):
        for config, workloads in http.items():
            if w not in workloads:
                continue
            points = workloads[w]
            x = [p["clients"] for p in points]
            color = colors[config]
            axes[0][col].plot(x, [p["throughput"] for p in points], marker="o", label=config, color=color)
            axes[0][col].fill_between(x, [p["throughput_min"] for p in points],
                                      [p["throughput_max"] for p in points], alpha=0.15, color=color)
            axes[1][col].plot(x, [p["p50_ms"] for p in points], marker="o", color=color, label=config)
            axes[1][col].plot(x, [p["p99_ms"] for p in points], ls=":", color=color)
        axes[0][col].set_title(w)
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("latency ms (p50 —, p99 ···)")
        for row in axes:
            row[col].set_xlabel("concurrent clients")
            row[col].set_xscale("log", base=2)
            row[col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"tiled-stack benchmark {results['meta']['date']} ({results['meta']['host']['cpus']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict, out_dir: Path, stamp: str) -> list[Path]:
    results["targets"] = targets(results)
    results["ratios"] = ratios(results)
    base = out_dir / stamp
    json_path, md_path, png_path = base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".png")
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, png_path)
    md_path.write_text(markdown(results) + f"\n![throughput and latency]({png_path.name})\n")
    return [md_path, json_path, png_path]


def summary(results: dict) -> str:
    lines = ["", "Targets:"]
    lines += [f"  {'✓' if t['met'] else '✗'} {t['target']}: {t['measured']}" for t in results["targets"]]
    lines.append(f"Peak throughput against {BASELINE}:")
    for config, by in results["ratios"].items():
        lines.append(f"  {config:17} " + "  ".join(f"{w} {r:.2f}×" for w, r in by.items()))
    if results.get("auth"):
        a = results["auth"]
        base = a["reads"]["single-user key"]["p50_ms"]
        lines.append(f"Authentication: login p50 {a['login']['p50_ms']} ms, refresh p50 {a['refresh']['p50_ms']} ms; "
                     "a read adds " + ", ".join(f"{p['p50_ms'] - base:+.1f} ms ({label})"
                                                for label, p in a["reads"].items() if label != "single-user key"))
    if results.get("arrays"):
        lines.append("Arrays (stack, HAProxy):")
        lines += [f"  {'✓' if t['met'] else '✗'} {t['target']}: {t['measured']}" for t in arrays.targets(results["arrays"])]
    return "\n".join(lines)


if __name__ == "__main__":  # re-render a result: python -m benchmarks.report benchmarks/results/<stamp>.json
    import sys

    source = Path(sys.argv[1])
    print(", ".join(str(p) for p in write(json.loads(source.read_text()), source.parent, source.stem)))
