"""What the replicas use: resident memory (Docker's stats) and PostgreSQL connections."""

import statistics
from pathlib import Path

from benchmarks.load import Background

from scripts.lib.docker_api import client, project_containers
from scripts.lib.postgres import sql
from scripts.lib.say import Failure

CGROUP_CPU = [  # cgroup v1 (cgroupfs), v2 (systemd), v2 (cgroupfs): nanoseconds or microseconds
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", 1e-9),
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", 1e-6),
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", 1e-6),
]


def container_cpu_s(container) -> float:
    for pattern, unit in CGROUP_CPU:
        path = Path(pattern.format(id=container.id))
        if path.exists():
            text = path.read_text()
            value = text.split()[1] if text.startswith("usage_usec") else text.split()[0]
            return int(value) * unit
    stats = container.stats(stream=False, one_shot=True)  # slower, where cgroups are not visible
    return stats["cpu_stats"]["cpu_usage"]["total_usage"] * 1e-9


def cpu_seconds(project: str) -> dict[str, float]:
    """CPU seconds used so far, per service (side replicas as `tiled-side`), and the host's busy seconds."""
    out: dict[str, float] = {}
    containers = [(c.labels.get("com.docker.compose.service", "?"), c)
                  for c in project_containers(project, all=False)]
    containers += [("tiled-side", c) for c in client().containers.list(
        filters={"label": f"tiled-stack.side-replica={project}"})]
    for service, c in containers:
        out[service] = out.get(service, 0.0) + container_cpu_s(c)
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    out["host_busy"] = (sum(fields) - fields[3] - fields[4]) / 100  # USER_HZ
    return out


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k in before}


def replica_memory_mib(project: str) -> dict[str, float]:
    out = {}
    for c in project_containers(project, "tiled", all=False):
        stats = c.stats(stream=False, one_shot=True)
        mem = stats.get("memory_stats", {})
        used = mem.get("usage", 0) - mem.get("stats", {}).get("inactive_file", 0)
        out[c.name] = round(used / 2**20, 1)
    return out


def pg_connections(project: str) -> dict[str, dict[str, int]]:
    """Client address → {database: connections} for the two Tiled databases."""
    (postgres,) = project_containers(project, "postgres", all=False)
    query = ("select coalesce(host(client_addr), 'local'), datname, count(*) from pg_stat_activity "
             "where datname in ('tiled_catalog', 'tiled_storage') group by 1, 2")
    out: dict[str, dict[str, int]] = {}
    try:
        rows = sql(postgres, "postgres", query).split()
    except Failure:
        return out  # a sample missed; the sampler tries again
    for line in rows:
        address, database, count = line.split("|")
        out.setdefault(address, {})[database] = int(count)
    return out


class Sampler(Background):
    """Samples memory and PostgreSQL connections in a thread while a load runs."""

    def __init__(self, project: str):
        self.project = project
        self.memory: list[dict[str, float]] = []
        self.connections: list[dict[str, dict[str, int]]] = []
        super().__init__()

    def run(self):
        while not self.stopping.is_set():
            self.memory.append(replica_memory_mib(self.project))
            self.connections.append(pg_connections(self.project))
            self.stopping.wait(0.5)

    def summary(self) -> dict:
        peak_mem = {}
        for sample in self.memory:
            for name, mib in sample.items():
                peak_mem[name] = max(peak_mem.get(name, 0), mib)
        per_replica = [sum(db.values()) for sample in self.connections for addr, db in sample.items()
                       if addr != "local"]
        return {"memory_peak_mib": peak_mem,
                "pg_connections_per_replica_max": max(per_replica, default=0),
                "pg_connections_per_replica_median": statistics.median(per_replica) if per_replica else 0,
                "samples": len(self.memory)}
