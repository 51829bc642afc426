"""Swarm tier (`make test-swarm`, run by CI): the stack on a real three-node Docker Swarm.

Three Docker Engines in containers of this host (tests/swarm_lab.py says how and why),
one manager and two workers. The images travel as a user's would: `make images-bundle`
here, `make images-load` into every node. The stack is deployed with `make swarm-up`
from the manager, whose engine DOCKER_HOST names, as an operator's shell would. A host
directory bound at the same path into every node is the shared filesystem.

Node 1 is labelled for the databases and the front door; the replicas spread over all
three. Every test talks to HAProxy on node 1's address, and maps the replica that
answered (X-Tiled-Replica, HAProxy's stats) to the node that runs it.
"""

import json
import os
import secrets
import shutil
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from tiled.client import from_uri

from conftest import ROOT, StreamCollector, make
from load_clients import NodeWriter, Readers, keys_in_catalog, reading_paths
from scripts import build_images, env_file
from scripts.acquire import acquire
from scripts.lib import haproxy_stats
from swarm_lab import NODE_IMAGE, Lab

pytestmark = [pytest.mark.live, pytest.mark.swarm]

NODES = 3


class Cluster:
    def __init__(self, lab: Lab, env_path: Path, api_key: str, project: str):
        self.lab, self.env_path, self.api_key, self.project = lab, env_path, api_key, project
        self.manager = lab.nodes[0]
        self.url = f"https://{lab.addresses[self.manager]}:8000"  # TILED_TLS=on, the CA in SSL_CERT_FILE
        self.stats_page = f"http://{lab.addresses[self.manager]}:8404"
        self.stats_url = self.stats_page  # with its login, once .env exists (login())
        self.docker_host = lab.url(self.manager)

    def login(self) -> None:
        values = env_file.parse(self.env_path.read_text())
        self.api_key = values["TILED_SINGLE_USER_API_KEY"]
        self.stats_url = self.stats_page.replace("http://", f"http://stats:{values['HAPROXY_STATS_PASSWORD']}@")

    def make(self, target: str, *args: str, **env) -> str:
        return make(target, self.env_path, *args, DOCKER_HOST=self.docker_host, **env).stdout

    def replica_nodes(self) -> Counter:
        """Running Tiled tasks per node."""
        where = self.lab.node_of_address()
        return Counter(where[s["addr"]] for s in haproxy_stats.servers(self.stats_url) if s["status"] == "UP")

    def slot_nodes(self, backend: str = haproxy_stats.BACKEND) -> dict[str, str]:
        """HAProxy's server slot (X-Tiled-Replica) → node of the replica behind it."""
        where = self.lab.node_of_address()
        return {s["name"]: where.get(s["addr"], "?") for s in haproxy_stats.servers(self.stats_url, backend)}

    def tiled_tasks(self) -> list[dict]:
        service = self.lab.engine(self.manager).services.get(f"{self.project}_tiled")
        return [t for t in service.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]


def build_node_image() -> None:
    base = build_images.compose_builds()["haproxy"]["args"]["BASE_IMAGE"]
    build_images.ensure_image(NODE_IMAGE, ROOT / "tests" / "swarm_node", {"BASE_IMAGE": base}, base,
                              build_images.base_image_id(base))


@pytest.fixture(scope="module")
def cluster(images, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from swarm_cluster(tmp_path_factory, monkeypatch)


def swarm_cluster(tmp_path_factory, monkeypatch):
    started = time.monotonic()
    build_node_image()
    folder = tmp_path_factory.mktemp("swarm")
    shared = folder / "shared"
    (shared / "arrays").mkdir(parents=True)
    os.chown(shared / "arrays", 10001, 10001)
    name = f"tiledswarm{secrets.token_hex(3)}"
    lab = Lab(name, shared, NODES)
    try:
        lab.start()
        lab.label(lab.nodes[0], **{"tiled-stack.db": "true", "tiled-stack.frontdoor": "true"})
        formed = time.monotonic()
        env_path = folder / ".env"
        env_path.write_text(f"COMPOSE_PROJECT_NAME={name}\nTILED_REPLICAS=3\nTILED_MAX_REPLICAS=8\n"
                            f"TILED_ARRAYS_PATH={shared / 'arrays'}\nHAPROXY_AUTH_FAIL_LIMIT=1000000\n"
                            f"TILED_TLS=on\nTILED_TLS_NAMES={lab.addresses[lab.nodes[0]]}\n")
        # Every client here (httpx, Tiled's, the websockets) trusts the stack's own CA, as the README says.
        monkeypatch.setenv("SSL_CERT_FILE", str(folder / "tls" / "ca.pem"))
        bundle = folder / "bundle" / "tiled-stack-images.tar"
        make("images-bundle", env_path, OUT=str(bundle))
        bundled = time.monotonic()
        loads = {}

        def load(node):
            loads[node] = make("images-load", env_path, BUNDLE=str(bundle), DOCKER_HOST=lab.url(node), check=False)

        threads = [threading.Thread(target=load, args=(n,)) for n in lab.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(done.returncode == 0 for done in loads.values()), "make images-load failed on a node"
        loaded = time.monotonic()
        cluster = Cluster(lab, env_path, "", name)
        cluster.bundle = bundle
        cluster.make("swarm-up")
        cluster.login()
        print(f"\nSwarm of {NODES} nodes formed in {formed - started:.0f}s (node image included); bundle "
              f"{bundle.stat().st_size / 2**20:.0f} MiB written in {bundled - formed:.0f}s, loaded into "
              f"{NODES} nodes at once in {loaded - bundled:.0f}s; make swarm-up {time.monotonic() - loaded:.0f}s")
        yield cluster
    finally:
        for node in lab.nodes:
            try:
                print(f"--- {node}: its engine's last lines\n"
                      + lab.host.containers.get(node).logs(tail=15).decode(errors="replace"))
            except Exception:  # noqa: BLE001 (already gone)
                pass
        lab.remove()
        shutil.rmtree(ROOT / ".state" / name, ignore_errors=True)  # the stack file make swarm-up wrote
        shutil.rmtree(folder / "bundle", ignore_errors=True)  # 1.8 GB; pytest keeps its last three runs


def served_by(cluster: Cluster, path: str, n: int) -> list[tuple[str, bytes]]:
    """`n` GETs through HAProxy, each on a new connection: (node of the replica, body)."""
    slots = cluster.slot_nodes()
    found = []
    for _ in range(n):
        with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Apikey {cluster.api_key}",
                                                         "Accept": "application/octet-stream"}, timeout=30) as c:
            response = c.get(path)
            assert response.status_code == 200, response.text[:300]
            found.append((slots.get(response.headers["X-Tiled-Replica"], "?"), response.content))
    return found


def test_deployed_across_nodes_with_secrets_out_of_the_environment(cluster):
    per_node = cluster.replica_nodes()
    print(f"\nreplicas per node: {dict(sorted(per_node.items()))}")
    assert sum(per_node.values()) == 3 and len(per_node) >= 2, per_node
    env_file_values = env_file.parse(cluster.env_path.read_text())
    secret_values = {env_file_values[k] for k in env_file.all_secrets() if env_file_values.get(k)}
    for service in cluster.lab.engine(cluster.manager).services.list():
        spec = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        leaked = [e.split("=", 1)[0] for e in spec.get("Env", []) if e.split("=", 1)[1] in secret_values]
        assert not leaked, f"{service.name} carries secrets in its environment: {leaked}"
        assert spec["Image"].startswith("sha256:"), f"{service.name} names its image by tag: {spec['Image']}"
    status = cluster.make("swarm-status")
    assert "3 UP of 3 discovered" in status, status
    assert env_file.parse(cluster.env_path.read_text())["HAPROXY_STATS_PASSWORD"] not in status  # login not printed
    # The stats port is on the node's network here: no page without the login.
    assert httpx.get(f"{cluster.stats_page}/stats").status_code == 401
    assert httpx.get(f"{cluster.stats_page}/metrics").status_code == 401


def test_a_scan_reads_back_equal_and_its_frames_from_replicas_on_two_nodes_or_more(cluster):
    documents = []
    scan_uid, count_uid = acquire(cluster.url, cluster.api_key, points=9, frames=4, documents=documents)
    run = from_uri(cluster.url, api_key=cluster.api_key)[scan_uid]
    descriptors = {d["uid"] for n, d in documents if n == "descriptor"}
    events = [d for n, d in documents if n == "event" and d["descriptor"] in descriptors]
    scan_events = [e for e in events if "det" in e["data"]]
    np.testing.assert_array_equal(run["primary"].read()["det"].values, [e["data"]["det"] for e in scan_events])
    frames = np.stack([e["data"]["camera_img"] for e in events if "camera_img" in e["data"]])
    cluster.frames = (count_uid, frames)
    reads = served_by(cluster, f"/api/v1/array/full/{count_uid}/primary/camera_img", 12)
    nodes = Counter(node for node, _ in reads)
    chunks = [p for p in (cluster.lab.shared / "arrays").rglob("*") if p.is_file()]
    print(f"\nscan of 9 points and 4 frames written through HAProxy; the frames read 12 times: "
          f"{dict(sorted(nodes.items()))}; {len(chunks)} files on the shared filesystem")
    assert len(nodes) >= 2, f"every read came from one node: {nodes}"
    assert all(body == frames.tobytes() for _, body in reads)
    assert chunks


def test_a_subscriber_on_one_node_gets_writes_through_other_nodes_in_order(cluster):
    client = from_uri(cluster.url, api_key=cluster.api_key)
    key = f"stream_{secrets.token_hex(4)}"
    node = client.create_appendable_table(pa.schema([("value", pa.int64())]), key=key)
    node.append_partition(0, pa.table({"value": [-1]}))
    answered = []
    client.context.http_client.event_hooks["response"].append(
        lambda r: answered.append(r.headers.get("X-Tiled-Replica")) if r.request.method == "PATCH" else None)
    collector = StreamCollector("value")
    subscription = node.subscribe()
    subscription.new_data.add_callback(collector.on_data)
    subscription.start_in_thread()
    try:
        busy = []
        for _ in range(50):
            busy = [s for s in haproxy_stats.servers(cluster.stats_url, "tiled_stream") if s["sessions"]]
            if busy:
                break
            time.sleep(0.1)
        assert len(busy) == 1, f"HAProxy's tiled_stream backend: {busy}"
        slots = cluster.slot_nodes()
        subscriber_node = cluster.lab.node_of_address()[busy[0]["addr"]]
        for value in range(20):
            node.append_partition(0, pa.table({"value": [value]}))
        collector.wait_for(20)
    finally:
        subscription.disconnect()
    writers = Counter(slots.get(s, "?") for s in answered if s)
    print(f"\nsubscriber's replica on {subscriber_node}; 20 writes answered by replicas on {dict(sorted(writers.items()))}")
    assert collector.values == list(range(20)), collector.values
    assert collector.sequences == list(range(collector.sequences[0], collector.sequences[0] + 20))
    assert sum(n for w, n in writers.items() if w != subscriber_node) >= 5, writers


def under_load(cluster: Cluster, action) -> tuple[list, dict, list, float]:
    """Reads and creates through HAProxy while `action()` runs: reads, creates, keys in the catalog, seconds."""
    client = from_uri(cluster.url, api_key=cluster.api_key)
    parent = f"load_{secrets.token_hex(4)}"
    client.create_container(parent)
    with Readers(cluster.url, cluster.api_key, reading_paths(client, parent)) as load, \
            NodeWriter(cluster.url, cluster.api_key, parent) as writer:
        time.sleep(2)
        t0 = time.monotonic()
        action()
        took = time.monotonic() - t0
        time.sleep(2)
    return [o for *_, o in load.results], writer.outcomes, keys_in_catalog(client, parent), took


def test_a_rolling_update_under_load_fails_no_request(cluster):
    before = {t["ID"] for t in cluster.tiled_tasks()}
    reads, creates, keys, took = under_load(cluster, lambda: cluster.make("swarm-rollout"))
    after = {t["ID"] for t in cluster.tiled_tasks()}
    print(f"\nmake swarm-rollout of 3 replicas took {took:.0f}s; during it {len(reads)} reads "
          f"{dict(Counter(map(str, reads)))}, {len(creates)} creates {dict(Counter(map(str, creates.values())))}; "
          f"replicas per node after: {dict(sorted(cluster.replica_nodes().items()))}")
    assert len(after) == 3 and not after & before, "every replica must be replaced"
    assert set(reads) == {200}
    assert set(creates.values()) == {200}
    assert sorted(keys) == sorted(creates)


def test_swarm_up_after_a_changed_secret_returns_once_every_replica_has_it_and_fails_no_request(cluster):
    old = env_file.parse(cluster.env_path.read_text())["TILED_METRICS_KEY"]
    cluster.env_path.write_text(cluster.env_path.read_text().replace(f"TILED_METRICS_KEY={old}",
                                                                     f"TILED_METRICS_KEY={secrets.token_hex(32)}"))
    before = {t["ID"] for t in cluster.tiled_tasks()}
    reads, creates, keys, took = under_load(cluster, lambda: cluster.make("swarm-up"))

    def metrics_secret(spec):
        return {s["SecretName"] for s in spec["ContainerSpec"]["Secrets"] if s["File"]["Name"] == "TILED_METRICS_KEY"}

    service = cluster.lab.engine(cluster.manager).services.get(f"{cluster.project}_tiled")
    wanted = metrics_secret(service.attrs["Spec"]["TaskTemplate"])
    tasks = cluster.tiled_tasks()
    print(f"\nmake swarm-up with a changed secret took {took:.0f}s; during it {len(reads)} reads "
          f"{dict(Counter(map(str, reads)))}, {len(creates)} creates {dict(Counter(map(str, creates.values())))}")
    assert wanted != metrics_secret(service.attrs["PreviousSpec"]["TaskTemplate"])  # a new Docker secret
    assert len(tasks) == 3 and all(metrics_secret(t["Spec"]) == wanted for t in tasks), "returned before the update"
    assert not {t["ID"] for t in tasks} & before
    assert set(reads) == {200}
    assert set(creates.values()) == {200}
    assert sorted(keys) == sorted(creates)


def test_scaling_3_to_6_and_back_under_load_fails_no_request(cluster):
    seen = {}

    def scale():
        cluster.make("swarm-scale", N="6")
        seen[6] = dict(sorted(cluster.replica_nodes().items()))
        cluster.make("swarm-scale", N="3")
        seen[3] = dict(sorted(cluster.replica_nodes().items()))

    reads, creates, keys, took = under_load(cluster, scale)
    print(f"\nscale 3→6→3 took {took:.0f}s; replicas per node at 6: {seen[6]}, back at 3: {seen[3]}; "
          f"{len(reads)} reads {dict(Counter(map(str, reads)))}, {len(creates)} creates "
          f"{dict(Counter(map(str, creates.values())))}")
    assert sum(seen[6].values()) == 6 and len(seen[6]) == NODES
    assert sum(seen[3].values()) == 3
    assert set(reads) == {200}
    assert set(creates.values()) == {200}
    assert sorted(keys) == sorted(creates)


def test_a_damaged_bundle_is_refused_and_nothing_loaded(cluster, tmp_path):
    copy = tmp_path / cluster.bundle.name
    os.link(cluster.bundle, copy)
    manifest = json.loads(Path(f"{cluster.bundle}.json").read_text())
    Path(f"{copy}.json").write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    node = cluster.lab.nodes[1]
    before = {i.id for i in cluster.lab.engine(node).images.list()}
    done = make("images-load", cluster.env_path, BUNDLE=str(copy), DOCKER_HOST=cluster.lab.url(node), check=False)
    assert done.returncode != 0 and "nothing was loaded" in done.stdout, done.stdout
    assert {i.id for i in cluster.lab.engine(node).images.list()} == before


def test_backup_on_the_database_node_holds_the_catalog_and_the_arrays(cluster, tmp_path):
    target = tmp_path / "backup"
    cluster.make("backup", BACKUP_DIR=str(target))
    manifest = json.loads((target / "manifest.json").read_text())
    with tarfile.open(target / "arrays.tar") as tar:
        files = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    shared = cluster.lab.shared / "arrays"
    on_disk = {str(p.relative_to(shared)) for p in shared.rglob("*") if p.is_file()}
    print(f"\nmake backup on the manager (the database node): {manifest['catalog_nodes']} catalog nodes, "
          f"{len(files)} files of the shared array folder")
    assert manifest["catalog_nodes"] > 10
    assert files and files == on_disk


def test_down_and_up_keep_the_data(cluster):
    t0 = time.monotonic()
    cluster.make("swarm-down")
    down = time.monotonic() - t0
    assert not cluster.lab.engine(cluster.manager).services.list()
    cluster.make("swarm-up")
    count_uid, frames = cluster.frames
    reads = served_by(cluster, f"/api/v1/array/full/{count_uid}/primary/camera_img", 3)
    print(f"\nmake swarm-down {down:.0f}s, make swarm-up {time.monotonic() - t0 - down:.0f}s; frames read back after")
    assert all(body == frames.tobytes() for _, body in reads)


def test_a_worker_node_killed_under_load_fails_no_read_once_haproxy_marks_it_down(cluster):
    per_node = cluster.replica_nodes()
    victim = next(n for n in cluster.lab.nodes[1:] if per_node.get(n))
    victim_addresses = {a for a, n in cluster.lab.node_of_address().items() if n == victim}
    client = from_uri(cluster.url, api_key=cluster.api_key)
    parent = f"kill_{secrets.token_hex(4)}"
    client.create_container(parent)
    marks = {}
    with Readers(cluster.url, cluster.api_key, reading_paths(client, parent)) as load:
        time.sleep(2)
        killed = time.monotonic()
        cluster.lab.kill(victim)
        deadline = killed + 240
        while time.monotonic() < deadline and len(marks) < 2:
            servers = haproxy_stats.servers(cluster.stats_url)
            if "down" not in marks and not any(s["addr"] in victim_addresses and s["status"].startswith("UP")
                                              for s in servers):
                marks["down"] = time.monotonic()
            tasks = cluster.tiled_tasks()
            nodes = {t["NodeID"] for t in tasks}
            victim_id = cluster.lab.engine(cluster.manager).nodes.get(victim).id
            up = sum(s["status"] == "UP" for s in servers)
            if "down" in marks and len(tasks) == 3 and victim_id not in nodes and up == 3:
                marks["rescheduled"] = time.monotonic()
            time.sleep(0.5)
        time.sleep(3)
    assert len(marks) == 2, f"after 240 s: {marks} (HAProxy: {servers}, tasks on nodes {nodes})"
    results = load.results
    before = [o for start, _, o in results if start < marks["down"]]
    after = [o for start, _, o in results if start >= marks["down"]]
    after_kill = [o for start, _, o in results if start >= killed]
    print(f"\nkilled {victim} (it ran {per_node[victim]} of 3 replicas): HAProxy marked them down after "
          f"{marks['down'] - killed:.1f}s; Swarm had 3 replicas running elsewhere, UP in HAProxy, after "
          f"{marks['rescheduled'] - killed:.1f}s: {dict(sorted(cluster.replica_nodes().items()))}. Reads from the "
          f"kill on: {len(after_kill)}, of which failed {sum(o != 200 for o in after_kill)} "
          f"({dict(Counter(map(str, after_kill)))}); before the mark {dict(Counter(map(str, before)))}; "
          f"after it {len(after)}, failed {sum(o != 200 for o in after)}")
    assert after and set(after) == {200}
