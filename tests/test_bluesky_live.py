"""Live tier: Bluesky end to end through the stack, and live streaming across replicas."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest
import tifffile
from bluesky.plans import scan
from tiled.client import from_uri
from tiled.client.register import register

from conftest import StreamCollector, container_addresses, rows_in_storage, subscriber_replica
from scripts.lib import wait
from scripts.acquire import acquire, devices, writing_engine
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live


@pytest.fixture(scope="session")
def runs(stack, api_key):
    """The demo's scan and image count, written through HAProxy, with every document they emitted."""
    documents = []
    scan_uid, count_uid = acquire(stack.local_url, api_key, points=15, frames=4, documents=documents)
    return scan_uid, count_uid, documents


def events_of(documents, run_uid):
    descriptors = {d["uid"] for n, d in documents if n == "descriptor" and d["run_start"] == run_uid}
    return [d for n, d in documents if n == "event" and d["descriptor"] in descriptors]


def test_scan_reads_back_equal_through_haproxy(stack, tiled, runs):
    scan_uid, _, documents = runs
    run = from_uri(stack.local_url, api_key=tiled.context.api_key)[scan_uid]
    start = next(d for n, d in documents if n == "start" and d["uid"] == scan_uid)
    stop = next(d for n, d in documents if n == "stop" and d["run_start"] == scan_uid)
    assert run.metadata["start"]["uid"] == scan_uid
    assert run.metadata["start"]["plan_name"] == start["plan_name"] == "scan"
    assert run.metadata["start"]["num_points"] == 15
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run.metadata["stop"]["num_events"] == stop["num_events"] == {"primary": 15}
    events = events_of(documents, scan_uid)
    data = run["primary"].read()
    for column in ("det", "motor", "motor_setpoint"):
        np.testing.assert_array_equal(data[column].values, [e["data"][column] for e in events])


def test_image_frames_read_back_byte_identical(stack, tiled, runs):
    _, count_uid, documents = runs
    frames = np.stack([e["data"]["camera_img"] for e in events_of(documents, count_uid)])
    assert frames.shape == (4, 48, 64)
    stored = tiled[count_uid]["primary"]["camera_img"].read()
    assert stored.dtype == frames.dtype and stored.tobytes() == frames.tobytes()


def test_event_table_lives_in_the_storage_database(stack, values, tiled, runs):
    scan_uid, _, documents = runs
    events = events_of(documents, scan_uid)
    rows = rows_in_storage(stack, values, tiled[scan_uid]["primary"].base["internal"], "seq_num, det")
    assert sorted(rows) == [(e["seq_num"], e["data"]["det"]) for e in events]


def test_concurrent_run_engines_lose_and_duplicate_nothing(stack, api_key):
    plans = {0: 7, 1: 11, 2: 13, 3: 17}

    def one(index):
        engine = writing_engine(from_uri(stack.local_url, api_key=api_key))
        motor, det, _ = devices()
        (uid,) = engine(scan([det], motor, -index - 1, index + 1, plans[index]), writer=index)
        return uid

    with ThreadPoolExecutor(max_workers=4) as pool:
        uids = list(pool.map(one, plans))
    client = from_uri(stack.local_url, api_key=api_key)
    for index, uid in enumerate(uids):
        run = client[uid]
        assert run.metadata["stop"]["num_events"] == {"primary": plans[index]}
        # Tiled reads the event table with no ORDER BY (tiled 0.2.20): with concurrent writers
        # PostgreSQL may return rows out of append order, so order them by seq_num here.
        rows = run["primary"].base["internal"].read().sort_values("seq_num")
        assert list(rows["seq_num"]) == list(range(1, plans[index] + 1)), "an event lost or duplicated"
        np.testing.assert_allclose(rows["motor"].values, np.linspace(-index - 1, index + 1, plans[index]))


@pytest.fixture
def stream_table(tiled):
    """An appendable table and a subscription to it through HAProxy."""
    key = f"stream_{time.monotonic_ns()}"
    node = tiled.create_appendable_table(pa.schema([("value", pa.int64())]), key=key)
    node.append_partition(0, pa.table({"value": [-1]}))  # the table exists before anyone subscribes
    collector = StreamCollector("value")
    subscription = node.subscribe()
    subscription.new_data.add_callback(collector.on_data)
    subscription.start_in_thread()
    yield key, node, collector, subscription
    subscription.disconnect()


def append(node, value):
    node.append_partition(0, pa.table({"value": [value]}))


def assert_in_order(collector, values):
    assert collector.values == values, collector.values
    sequences = collector.sequences
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences


def test_streaming_reaches_a_subscriber_on_another_replica_in_order(stack, api_key, stream_table):
    key, node, collector, _ = stream_table
    holder = subscriber_replica(stack)
    other = next(a for a in container_addresses(stack, "tiled") if a != holder)
    direct = from_uri(f"http://{other}:8000", api_key=api_key)[key]
    sent = {}
    for value in range(20):
        target = direct if value % 2 else node  # alternately straight to another replica, and through HAProxy
        sent[value] = time.perf_counter()
        append(target, value)
    collector.wait_for(20)
    assert_in_order(collector, list(range(20)))
    latencies = sorted((collector.arrived[v] - sent[v]) * 1000 for v in sent)
    print(f"write→delivery across replicas: p50 {np.percentile(latencies, 50):.1f} ms, "
          f"p99 {np.percentile(latencies, 99):.1f} ms over {len(latencies)} updates")


def test_an_idle_subscription_outlives_haproxys_client_and_server_timeouts(stack, stream_table):
    key, node, collector, _ = stream_table
    append(node, 1)
    collector.wait_for(1)
    time.sleep(125)  # HAProxy: timeout client 60s, timeout server 120s (haproxy/haproxy.cfg)
    append(node, 2)
    collector.wait_for(2)
    assert_in_order(collector, [1, 2])


def test_subscriber_resumes_without_loss_when_its_replica_stops(stack, stream_table):
    key, node, collector, _ = stream_table
    for value in range(5):
        append(node, value)
    collector.wait_for(5)
    holder = container_addresses(stack, "tiled")[subscriber_replica(stack)]
    holder.stop(timeout=20)
    try:
        for value in range(5, 15):
            append(node, value)
            time.sleep(0.2)
        collector.wait_for(15, timeout=60)
        assert_in_order(collector, list(range(15)))
    finally:
        holder.start()
        wait.until_healthy(stack, stack.replicas)


@pytest.fixture(scope="session")
def detector_dir(stack):
    return next(p for p in stack.values["TILED_READABLE_STORAGE"].split(":") if p)


def test_detector_files_register_and_read_back_through_haproxy(stack, tiled, detector_dir):

    folder = Path(detector_dir) / f"scan_{time.monotonic_ns()}"
    folder.mkdir()
    frames = np.random.default_rng(1).integers(0, 65535, (3, 32, 40), dtype="uint16")
    with h5py.File(folder / "detector.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames)
    (folder / "tiffs").mkdir()
    for i, frame in enumerate(frames):
        tifffile.imwrite(folder / "tiffs" / f"frame_{i:05d}.tif", frame)
    for path in [folder, folder / "tiffs", *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    asyncio.run(register(tiled, folder, prefix=f"/{folder.name}"))
    node = tiled[folder.name]
    h5 = node["detector"]["entry"]["data"]["data"].read()
    assert h5.tobytes() == frames.tobytes()
    (sequence,) = list(node["tiffs"])  # the TIFF files are registered as one image sequence
    assert node["tiffs"][sequence].read().tobytes() == frames.tobytes()


def test_replicas_cannot_write_into_detector_storage(stack, detector_dir):
    for replica in project_containers(stack.project, "tiled", all=False):
        result = replica.exec_run(["sh", "-c", f"touch {detector_dir}/written-by-tiled"])
        assert result.exit_code != 0 and b"Read-only file system" in result.output, result.output
