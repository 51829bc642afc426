"""The same behaviour in every deployment option (see conftest.py for the modes)."""

import asyncio
import os
import time

import h5py
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
from bluesky.plans import scan
from tiled.client import from_uri
from tiled.client.register import register

from conformance import crowd
from conftest import StreamCollector
from scripts.acquire import devices, writing_engine


def client(deployment):
    return from_uri(deployment.url, api_key=deployment.api_key)


def unique(name):
    return f"{name}_{time.monotonic_ns()}"


def test_reads_and_writes_need_the_api_key(deployment):
    with httpx.Client(base_url=deployment.url) as http:
        assert http.get("/api/v1/metadata/").status_code == 401
        assert http.get("/api/v1/metadata/", headers={"Authorization": "Apikey wrong"}).status_code == 401
        body = {"data": {"type": "container",
                         "attributes": {"structure_family": "container", "metadata": {}, "specs": []}}}
        assert http.post("/api/v1/metadata/", json=body).status_code == 401
        ok = http.get("/api/v1/metadata/", headers={"Authorization": f"Apikey {deployment.api_key}"})
        assert ok.status_code == 200


def test_array_round_trip(deployment):
    array = np.random.default_rng(2).random((64, 50))
    key = unique("array")
    client(deployment).write_array(array, key=key, metadata={"mode": deployment.mode})
    node = client(deployment)[key]
    assert node.read().tobytes() == array.tobytes() and node.metadata["mode"] == deployment.mode


def test_appendable_table_round_trip(deployment):
    table = pd.DataFrame({"x": np.arange(20, dtype="int64"), "y": np.linspace(0, 1, 20)})
    key = unique("table")
    node = client(deployment).create_appendable_table(pa.Schema.from_pandas(table, preserve_index=False), key=key)
    for part in (table.iloc[:12], table.iloc[12:]):
        node.append_partition(0, pa.Table.from_pandas(part, preserve_index=False))
    pd.testing.assert_frame_equal(client(deployment)[key].read(), table)


def test_bluesky_scan_through_tiledwriter_reads_back_equal(deployment):
    events = []
    engine = writing_engine(client(deployment))
    engine.subscribe(lambda name, doc: events.append(doc) if name == "event" else None)
    motor, det, _ = devices()
    (uid,) = engine(scan([det], motor, -2, 2, 9))
    run = client(deployment)[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    data = run["primary"].read()
    np.testing.assert_array_equal(data["det"].values, [e["data"]["det"] for e in events])
    np.testing.assert_array_equal(data["motor"].values, [e["data"]["motor"] for e in events])


def test_detector_file_in_readable_storage_is_served(deployment):
    folder = deployment.readable_dir / unique("det")
    folder.mkdir()
    frames = np.arange(2 * 16 * 20, dtype="uint16").reshape(2, 16, 20)
    with h5py.File(folder / "image.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames)
    folder.chmod(0o755)
    (folder / "image.h5").chmod(0o644)
    c = client(deployment)
    asyncio.run(register(c, folder, prefix=f"/{folder.name}"))
    assert c[folder.name]["image"]["entry"]["data"]["data"].read().tobytes() == frames.tobytes()


def test_streaming_delivers_every_update_in_order(deployment):
    c = client(deployment)
    node = c.create_appendable_table(pa.schema([("v", pa.int64())]), key=unique("stream"))
    node.append_partition(0, pa.table({"v": [0]}))
    received = StreamCollector("v")
    subscription = node.subscribe()
    subscription.new_data.add_callback(received.on_data)
    subscription.start_in_thread()
    try:
        for value in range(1, 6):
            node.append_partition(0, pa.table({"v": [value]}))
        received.wait_for(5)
    finally:
        subscription.disconnect()
    assert received.values == [1, 2, 3, 4, 5]
    first = received.sequences[0]
    assert received.sequences == list(range(first, first + 5))


def test_a_crowd_of_readers_and_a_writer_get_right_answers(deployment):
    """50 clients read everything a beamline reads while a writer appends: no 5xx, no
    connection error, no wrong answer, the server still up, every appended row there."""
    before = deployment.alive()
    assert before, f"{deployment.mode} is not running before the crowd"
    seconds = float(os.environ.get("CROWD_SECONDS", 20))
    result = crowd.run(deployment.url, deployment.api_key, unique("crowd"), seconds)
    print(f"{deployment.mode}: {result.summary()}")
    assert not result.errors, f"{result.summary()}\n" + "\n".join(result.examples)
    assert deployment.alive() == before, f"{deployment.mode} died or restarted under the crowd"
    for kind in crowd.paths("x"):
        assert sum(n for (k, _), n in result.requests.items() if k == kind) >= 5, f"few {kind} reads"
    assert not result.append_errors and result.appended >= 50, (result.appended, result.append_errors)
    assert result.read_back == list(range(100 + result.appended)), "appended rows missing or out of order"
