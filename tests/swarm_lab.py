"""A Docker Swarm of several engines on this one machine, for tests/test_swarm_live.py.

Each node is a container of the host's engine running Debian's Docker Engine
(tests/swarm_node/), on a private bridge network of its own, with its own storage
(an anonymous volume at /var/lib/docker: overlay2 inside, whatever the host uses).

Why containers, and these options (the host's engine: 20.10, fuse-overlayfs, cgroup v1):
  - not --privileged: this engine refuses it ("unable to apply caps": it lacks
    CAP_SYS_RESOURCE itself). SYS_ADMIN and NET_ADMIN, no seccomp or AppArmor profile and
    /dev/fuse are what dockerd needs to run containers; SYS_PTRACE is what `docker exec`
    (and so every healthcheck) needs to enter one (without it: "error executing setns
    process");
  - /sys/fs/cgroup bound read-write, and each inner dockerd with --cgroup-parent=/<node>:
    inner containers need writable cgroups, and the nodes' must not collide. They stay
    behind when a node is removed, so `remove()` deletes them;
  - each engine also listens on tcp://<node>:2375 on the private network, so that the
    stack's own scripts run here with DOCKER_HOST pointing at a node, as an operator's
    would on the manager. Plain TCP, no TLS: a test network only.
A host directory, bound at the same path into every node, stands in for the shared
filesystem. Services publish ports on a node's address (mode: host): no routing mesh,
since nested engines have no IPVS.
"""

import os
import time
from pathlib import Path

import docker

NODE_IMAGE = "tiled-stack/test-swarm-node:bookworm"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ENGINE_PORT = 2375


class Lab:
    def __init__(self, name: str, shared: Path, count: int = 3):
        self.name, self.shared, self.count = name, shared, count
        self.host = docker.from_env(timeout=600)
        self.nodes: list[str] = [f"{name}-node{i}" for i in range(1, count + 1)]
        self.addresses: dict[str, str] = {}

    # --- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        self.host.networks.create(self.name, driver="bridge", labels={"org.tiled-stack.test": self.name})
        for node in self.nodes:
            container = self.host.containers.run(
                NODE_IMAGE, name=node, hostname=node, detach=True, network=self.name,
                command=["--host=unix:///var/run/docker.sock", f"--host=tcp://0.0.0.0:{ENGINE_PORT}", "--tls=false",
                         f"--cgroup-parent=/{node}"],
                cap_add=["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"], security_opt=["seccomp=unconfined", "apparmor=unconfined"],
                devices=["/dev/fuse:/dev/fuse:rwm"],
                volumes={str(CGROUP_ROOT): {"bind": str(CGROUP_ROOT), "mode": "rw"},
                         str(self.shared): {"bind": str(self.shared), "mode": "rw"}},
                labels={"org.tiled-stack.test": self.name})
            container.reload()
            self.addresses[node] = container.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
        for node in self.nodes:
            self.wait_for_engine(node)
        manager = self.engine(self.nodes[0])
        manager.swarm.init(advertise_addr=self.addresses[self.nodes[0]], listen_addr="0.0.0.0:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in self.nodes[1:]:
            self.engine(node).swarm.join(remote_addrs=[f"{self.addresses[self.nodes[0]]}:2377"], join_token=token,
                                         advertise_addr=self.addresses[node], listen_addr="0.0.0.0:2377")
        deadline = time.monotonic() + 60
        while sum(n.attrs["Status"]["State"] == "ready" for n in manager.nodes.list()) < self.count:
            assert time.monotonic() < deadline, "the nodes did not all join the Swarm within 60 s"
            time.sleep(1)

    def wait_for_engine(self, node: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.engine(node).ping()
                return
            except Exception:  # noqa: BLE001 (not listening yet)
                if time.monotonic() > deadline:
                    logs = self.host.containers.get(node).logs(tail=20).decode(errors="replace")
                    raise AssertionError(f"{node}'s engine did not answer within {timeout:.0f}s:\n{logs}")
                time.sleep(0.5)

    def remove(self) -> None:
        """Every node (with its storage), the network, and the cgroups the nodes leave behind."""
        for container in self.host.containers.list(all=True, filters={"label": f"org.tiled-stack.test={self.name}"}):
            container.remove(force=True, v=True)
        for network in self.host.networks.list(filters={"label": f"org.tiled-stack.test={self.name}"}):
            network.remove()
        for node in self.nodes:
            remove_cgroups(node)

    # --- one node -----------------------------------------------------------------------------

    def url(self, node: str) -> str:
        return f"tcp://{self.addresses[node]}:{ENGINE_PORT}"

    def engine(self, node: str) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url(node), timeout=600)

    def label(self, node: str, **labels: str) -> None:
        target = self.engine(self.nodes[0]).nodes.get(node)
        spec = target.attrs["Spec"]
        spec["Labels"] = {**spec.get("Labels", {}), **labels}
        target.update(spec)

    def kill(self, node: str) -> None:
        """Stop the node's engine hard: SIGKILL to its dockerd and, with it, everything it runs."""
        self.host.containers.get(node).kill()

    def node_of_address(self) -> dict[str, str]:
        """Every running task's overlay address → its node's hostname (from the manager)."""
        manager = self.engine(self.nodes[0])
        names = {n.id: n.attrs["Description"]["Hostname"] for n in manager.nodes.list()}
        found = {}
        for service in manager.services.list():
            for task in service.tasks(filters={"desired-state": "running"}):
                for attachment in task.get("NetworksAttachments") or []:
                    for address in attachment.get("Addresses") or []:
                        found[address.split("/")[0]] = names.get(task.get("NodeID"), "?")
        return found


def remove_cgroups(node: str) -> None:
    """Remove /sys/fs/cgroup/<controller>/<node>/… bottom-up (only empty cgroups can go)."""
    for controller in CGROUP_ROOT.iterdir():
        top = controller / node
        if not top.is_dir() or top.is_symlink():
            continue
        for folder, subfolders, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(folder)
            except OSError:
                pass
