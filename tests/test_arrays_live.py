"""Live tier: detector arrays through HAProxy come back byte for byte, old and new.

Every dtype a detector gives TiledWriter (uint8, uint16, uint32, float32) is written
through HAProxy, by tiled.client and by a RunEngine, and read back whole, by frame, by
slice and by block: the bytes must be identical. Arrays written by Tiled as released
(a side replica of the unpatched image, on the same catalog and volume: Zstandard, one
chunk per upload) must read back the same through the patched replicas. A 512 MiB array
round-trips with each replica's peak RSS under its memory limit, Redis untouched, and a
subscriber told where the data is instead of being sent it. How fast: `make bench`.
"""

import json
import time

import httpx
import numpy as np
import pytest

from benchmarks.arrays import PeakMemory, replica_pids
from conftest import container_addresses
from scripts import build_images
from scripts.acquire import Camera, writing_engine
from scripts.lib import side_replica
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live

DTYPES = ["uint8", "uint16", "uint32", "float32"]


def detector_frames(dtype: str, shape=(12, 192, 160), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(100, 30, shape).astype("float32")
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def assert_reads_back(node, array: np.ndarray, api_key: str, verify) -> None:
    """Whole, single frames, slices, blocks, and raw bytes: each identical to `array`'s."""
    def same(got, want, what):
        want = np.ascontiguousarray(want)
        assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape)
        assert got.tobytes() == want.tobytes(), f"{what}: bytes differ"

    same(node.read(), array, "whole")
    for k in (0, len(array) // 2, len(array) - 1):
        same(node[k], array[k], f"frame {k}")
    same(node[2:7, 10:150, ::3], array[2:7, 10:150, ::3], "slice")
    same(node[-1, 5, :], array[-1, 5, :], "row of the last frame")
    same(np.asarray(node.read_block((0,) * array.ndim)), array[tuple(slice(0, c[0]) for c in node.chunks)],
         "block 0")
    raw = httpx.get(node.item["links"]["full"], params={"slice": "3"}, verify=verify, timeout=60,
                    headers={"Authorization": f"Apikey {api_key}", "Accept": "application/octet-stream"})
    raw.raise_for_status()
    assert raw.content == np.ascontiguousarray(array[3]).tobytes(), "raw octet-stream of frame 3"


def stored_layout(stack, node) -> dict:
    """The Zarr metadata of a node's array on the shared volume, read in a replica."""
    (source,) = node.data_sources()
    path = source.assets[0].data_uri.removeprefix("file://localhost").removeprefix("file://")
    (replica, *_) = project_containers(stack.project, "tiled", all=False)
    done = replica.exec_run(["cat", f"{path}/zarr.json"])
    assert done.exit_code == 0, done.output
    meta = json.loads(done.output)
    return {"chunks": meta["chunk_grid"]["configuration"]["chunk_shape"],
            "codecs": [c["name"] for c in meta["codecs"]]}


@pytest.fixture(scope="module")
def arrays(tiled):
    return tiled.create_container(f"arrays_{time.time_ns()}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_detector_dtypes_round_trip_byte_identical_through_haproxy(stack, api_key, arrays, dtype):
    array = detector_frames(dtype)
    node = arrays.write_array(array, key=f"frames_{dtype}")
    assert_reads_back(node, array, api_key, stack.verify)
    # Stored as many frames per chunk as fit in 512 KiB (the upload is one block of 12),
    # compressed with Blosc (as released: one chunk of 12, Zstandard).
    frames_per_chunk = {"uint8": 12, "uint16": 8, "uint32": 4, "float32": 4}[dtype]
    assert stored_layout(stack, node) == {"chunks": [frames_per_chunk, 192, 160], "codecs": ["bytes", "blosc"]}


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiledwriter_camera_frames_round_trip_byte_identical(stack, api_key, tiled, dtype):
    from tiled.client import from_uri

    class TypedCamera(Camera):
        def describe(self):
            description = super().describe()
            for key in description.values():
                key["dtype_numpy"] = np.dtype(dtype).str
            return description

    frames = detector_frames(dtype, (6, 128, 96), seed=5)
    it = iter(frames)
    camera = TypedCamera(name="camera", func=lambda: next(it))
    from bluesky.plans import count

    engine = writing_engine(from_uri(stack.local_url, api_key=api_key, verify=stack.verify))
    (uid,) = engine(count([camera], num=len(frames)), purpose=f"array test {dtype}")
    node = tiled[uid]["primary"]["camera_img"]
    assert_reads_back(node, frames, api_key, stack.verify)


def test_arrays_written_before_the_change_read_back_identical(stack, api_key, tiled):
    """Tiled as released writes (Zstandard, one chunk per upload, as every array stored
    before this release); the patched replicas read the same bytes through HAProxy."""
    from tiled.client import from_uri

    container, url = side_replica.start(stack.project, "prechange",
                                        image=build_images.tiled_variant(*build_images.UNPATCHED))
    try:
        old = from_uri(url, api_key=api_key).create_container(f"prechange_{time.time_ns()}")
        written = {dtype: detector_frames(dtype, seed=11) for dtype in DTYPES}
        for dtype, array in written.items():
            old.write_array(array, key=dtype)
    finally:
        side_replica.remove(stack.project, "prechange")
    parent = tiled[old.item["id"]]
    for dtype, array in written.items():
        node = parent[dtype]
        assert stored_layout(stack, node) == {"chunks": [12, 192, 160], "codecs": ["bytes", "zstd"]}, dtype
        assert_reads_back(node, array, api_key, stack.verify)
    # And an old array grows through the patched replicas: the new frames in its own layout.
    node = parent["uint16"]
    more = detector_frames("uint16", (3, 192, 160), seed=12)
    node.patch(more, offset=(12,), extend=True)
    assert_reads_back(tiled[old.item["id"]]["uint16"], np.concatenate([written["uint16"], more]), api_key,
                      stack.verify)


def redis_state(stack, values) -> tuple[int, int]:
    (redis,) = project_containers(stack.project, "redis", all=False)
    done = redis.exec_run(["redis-cli", "info", "memory"], environment={"REDISCLI_AUTH": values["REDIS_PASSWORD"]})
    used = int(next(line.split(":")[1] for line in done.output.decode().splitlines() if line.startswith("used_memory:")))
    return redis.attrs["RestartCount"], used


def test_512_mib_round_trip_under_every_replica_memory_limit(stack, api_key, values, arrays):
    """64 frames of 2048×2048 uint16 up and down through HAProxy; each replica's peak RSS
    (VmHWM) stays under its memory limit, none restarts, and Redis holds no copy of it."""
    array = np.random.default_rng(21).integers(0, 4096, (64, 2048, 2048), dtype=np.uint16)
    pids, limits = replica_pids(stack.project)
    restarts = {c.name: c.attrs["RestartCount"] for c in project_containers(stack.project, "tiled", all=False)}
    redis_before = redis_state(stack, values)
    memory = PeakMemory(pids)
    with memory.track("write"):
        node = arrays.write_array(array, key="big")
    with memory.track("read"):
        back = node.read()
    assert back.tobytes() == array.tobytes()
    del back
    print(f"peak RSS per replica (MiB), limit {limits}: write {memory.peaks['write']}, read {memory.peaks['read']}")
    for phase, peaks in memory.peaks.items():
        for name, peak in peaks.items():
            assert peak < limits[name], f"{name} peaked at {peak} MiB during the {phase}, limit {limits[name]} MiB"
    after = {c.name: c.attrs["RestartCount"] for c in project_containers(stack.project, "tiled", all=False)}
    assert after == restarts, "a replica restarted during the 512 MiB round trip"
    restarts_after, used_after = redis_state(stack, values)
    assert restarts_after == redis_before[0], "Redis restarted during the 512 MiB write"
    assert used_after - redis_before[1] < 32 * 2**20, f"Redis grew by {(used_after - redis_before[1]) >> 20} MiB"


def test_subscriber_is_told_where_a_large_write_is_and_sent_a_small_one(stack, api_key, arrays):
    """A subscriber on one replica (directly; the writes go through HAProxy, to any replica):
    a 4 MiB patch arrives as a reference it fetches, a 512 KiB one inline; both give the
    bytes written."""
    from tiled.client import from_uri

    node = arrays.write_array(np.zeros((1, 1024, 1024), dtype="uint16"), key="streamed")
    address = sorted(container_addresses(stack, "tiled"))[-1]
    watched = from_uri(f"http://{address}:8000", api_key=api_key)[arrays.item["id"]]["streamed"]
    got = []

    def on_data(update):
        offset = update.patch.offset if update.type == "array-ref" else update.offset
        got.append((update.type, tuple(offset or ()), update.data()))

    subscription = watched.subscribe()
    subscription.new_data.add_callback(on_data)
    subscription.start_in_thread()
    try:
        time.sleep(1.0)
        big = detector_frames("uint16", (2, 1024, 1024), seed=31)  # 4 MiB
        node.patch(big, offset=(1,), extend=True)
        small = detector_frames("uint16", (1, 256, 1024), seed=32)  # 512 KiB
        node.patch(small, offset=(3,), extend=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([g for g in got if g[1][:1] in ((1,), (3,))]) < 2:
            time.sleep(0.1)
    finally:
        subscription.disconnect()
    updates = {g[1][:1]: g for g in got}
    assert updates[(1,)][0] == "array-ref" and updates[(1,)][2].tobytes() == big.tobytes(), got
    assert updates[(3,)][0] == "array-data" and updates[(3,)][2].tobytes() == small.tobytes(), got
