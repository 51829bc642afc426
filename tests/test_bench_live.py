"""Live tier: `make bench QUICK=1` runs against the stack and produces sane results.

Only that the harness works is asserted (every configuration and workload has
answers, nothing failed, the report files exist); speed is the benchmark's
business (`make bench`, benchmarks/README.md), never a test's.
"""

import json

import pytest

from conftest import make
from scripts.lib import haproxy_stats

pytestmark = pytest.mark.live


def test_quick_benchmark_produces_complete_results(stack, tmp_path):
    before = haproxy_stats.up_count(stack.stats_url)
    done = make("bench", stack.env_path, QUICK="1", OUT=str(tmp_path))
    print(done.stdout[-2500:])
    (result,) = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    assert set(data["http"]) == {"direct-1", "direct-1-unpatched", "haproxy-1", "haproxy-2"}
    for config, workloads in data["http"].items():
        expected = {"metadata", "search"} if config.endswith("unpatched") else \
                   {"metadata", "search", "array", "table", "append"}
        assert set(workloads) == expected, config
        for name, points in workloads.items():
            for p in points:
                assert p["requests"] > 0 and p["throughput"] > 0, (config, name, p)
                assert set(p["statuses"]) == {"200"} and not p["failures"], (config, name, p)
    for config, runs in data["bluesky"].items():
        assert runs["stored"] == runs["events"] > 0, (config, runs)
    for config, stream in data["streaming"].items():
        assert stream["delivered"] == stream["expected"] > 0, (config, stream)
    assert data["resources"]["idle"]["memory_mib"] and data["resources"]["under_load"]["samples"] > 0
    # The array rows, the stack and one upstream process side by side, and the machine's limit.
    arrays = data["arrays"]
    from benchmarks.arrays import ORDER

    for target in ("stack", "upstream"):
        assert set(arrays[target]) == set(ORDER), (target, set(arrays[target]))
        for row, figures in arrays[target].items():
            assert "error" not in figures and figures["mib_s"] > 0, (target, row, figures)
        latency = arrays[target]["camera"]["latency"]
        assert latency["seen"] == latency["frames"] > 0, (target, latency)
    assert set(arrays["paths"]) == {"haproxy-loopback", "haproxy-frontend", "replica"}
    assert all(v > 0 for size in ("32", "512") for v in arrays["limit"][size].values())
    memory = arrays["memory"]
    assert set(memory["peak_write_mib"]) == set(memory["peak_read_mib"]) == set(memory["limit_mib"])
    assert "## Arrays" in result.with_suffix(".md").read_text()
    assert result.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Targets" in result.with_suffix(".md").read_text()
    assert haproxy_stats.up_count(stack.stats_url) == before, "the benchmark must restore the replica count"
