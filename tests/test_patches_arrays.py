"""Fast tier: patches 0029, 0030 and 0031 are active, and every byte read back is the same.

One probe runs twice, at once, in interpreters of their own: Tiled as released
(.venv/upstream) and as patched (the venv, as in the image). It writes arrays through
Tiled's HTTP API into a SQLite catalog with Zarr storage and an in-memory streaming
cache, reads them back whole, by frame, by slice and by block, and observes:
  0029  the stored Zarr layout: a frame per chunk, Blosc LZ4 with bit shuffle
  0030  what a subscriber is sent: a write of more than 1 MiB as a reference (array-ref,
        the slice written), published after the data is stored; smaller ones inline
  0031  the path of a node 3 levels deep found in one lookup, not one per level
  0032  that lookup in one statement, an array's assets in two (the statements counted
        with each of 0031 and 0032 left out, and as released)
The same array bytes are checked live, through HAProxy and PostgreSQL, by
tests/test_arrays_live.py.
"""

import pytest

from conftest import probe_pair, probe_tiled_stack

PROBE = r"""
import hashlib, json, tempfile
from pathlib import Path
import numpy as np
import orjson
import tiled
from sqlalchemy import event
from starlette.testclient import TestClient

out = {"tiled": tiled.__file__}
folder = tempfile.mkdtemp()
import tiled.server.app as tiled_app
app = tiled_app.build_app_from_config({
    "authentication": {"single_user_api_key": "k"}, "streaming_cache": {"uri": "memory"},
    "trees": [{"path": "/", "tree": "catalog", "args": {"uri": f"sqlite:///{folder}/c.db", "init_if_not_exists": True,
                                                        "writable_storage": [f"file://{folder}/data"]}}]})
key = {"Authorization": "Apikey k"}
octets = {**key, "Content-Type": "application/octet-stream", "Accept": "application/octet-stream"}
rng = np.random.default_rng(0)


def array_node(name, shape, chunks, dtype="<u2"):
    kind, size = dtype[1], int(dtype[2:])
    return {"id": name, "structure_family": "array", "specs": [], "metadata": {},
            "data_sources": [{"structure_family": "array", "management": "writable", "mimetype": None,
                              "structure": {"shape": list(shape), "chunks": [list(c) for c in chunks], "dims": None,
                                            "resizable": False,
                                            "data_type": {"endianness": "little", "kind": kind, "itemsize": size}}}]}


def digest(content):
    return hashlib.sha256(content).hexdigest()


def stored(name):
    meta = json.loads((Path(folder) / "data" / "run" / name / "zarr.json").read_text())
    codecs = [c["name"] + ("/" + c["configuration"].get("cname", "") + "/" + c["configuration"].get("shuffle", "")
                           if c["name"] == "blosc" else "") for c in meta["codecs"]]
    return {"chunks": meta["chunk_grid"]["configuration"]["chunk_shape"], "codecs": codecs}


frames = rng.integers(0, 4096, (16, 256, 256), dtype=np.uint16)   # 2 MiB, one upload chunk
small = rng.integers(0, 4096, (1, 64, 64), dtype=np.uint16)       # 8 KiB
more = rng.integers(0, 4096, (4, 256, 256), dtype=np.uint16)      # appended: 512 KiB
with TestClient(app) as c:
    c.post("/api/v1/metadata/", headers=key, json={"id": "run", "structure_family": "container", "specs": [],
                                                    "data_sources": [], "metadata": {}})
    cache = app.state.root_tree.context.streaming_cache._datastore._data_cache
    seen = set()

    def new_messages(label):
        # The array messages published since the last call: (type, patch, payload bytes).
        found = []
        for k in [k for k in cache.keys() if k not in seen]:
            seen.add(k)
            meta = orjson.loads(cache[k]["metadata"])
            if meta.get("type", "").startswith("array-"):
                found.append((meta["type"], meta.get("patch"), len(cache[k].get("payload") or b"")))
        return sorted(found, key=str)

    out["stream"] = {}
    assert c.post("/api/v1/metadata/run", headers=key,
                  json=array_node("frames", frames.shape, [(16,), (256,), (256,)])).status_code == 200
    new_messages("create")
    assert c.put("/api/v1/array/full/run/frames", headers=octets, content=frames.tobytes()).status_code == 200
    out["stream"]["put_full_2MiB"] = new_messages("full")
    assert c.patch("/api/v1/array/full/run/frames?offset=16&extend=true&shape=4,256,256", headers=octets,
                   content=more.tobytes()).status_code == 200
    out["stream"]["patch_512KiB"] = new_messages("patch")
    assert c.post("/api/v1/metadata/run", headers=key,
                  json=array_node("small", small.shape, [(1,), (64,), (64,)])).status_code == 200
    new_messages("create")
    assert c.put("/api/v1/array/full/run/small", headers=octets, content=small.tobytes()).status_code == 200
    out["stream"]["put_full_8KiB"] = new_messages("small")
    assert c.post("/api/v1/metadata/run", headers=key,
                  json=array_node("blocks", (10, 256, 256), [(5, 5), (256,), (256,)], "<u4")).status_code == 200
    new_messages("create")
    ten = rng.integers(0, 2**32 - 1, (10, 256, 256), dtype=np.uint32)
    assert c.put("/api/v1/array/block/run/blocks?block=1,0,0", headers=octets,
                 content=ten[5:].tobytes()).status_code == 200
    out["stream"]["put_block_1.25MiB"] = new_messages("block")
    assert c.put("/api/v1/array/block/run/blocks?block=0,0,0", headers=octets,
                 content=ten[:5].tobytes()).status_code == 200
    new_messages("block0")

    whole = np.concatenate([frames, more])
    reads = {
        "frames_full": (c.get("/api/v1/array/full/run/frames", headers=octets).content, whole),
        "frames_frame7": (c.get("/api/v1/array/full/run/frames?slice=7", headers=octets).content, whole[7]),
        "frames_slice": (c.get("/api/v1/array/full/run/frames?slice=3:18,10:200,::3", headers=octets).content,
                         whole[3:18, 10:200, ::3]),
        "frames_block": (c.get("/api/v1/array/block/run/frames?block=0,0,0", headers=octets).content, frames),
        "small": (c.get("/api/v1/array/full/run/small", headers=octets).content, small),
        "blocks_full": (c.get("/api/v1/array/full/run/blocks", headers=octets).content, ten),
        "blocks_block1": (c.get("/api/v1/array/block/run/blocks?block=1,0,0&slice=2", headers=octets).content,
                          ten[7]),
    }
    out["reads"] = {name: [digest(got), digest(np.ascontiguousarray(want).tobytes())] for name, (got, want) in reads.items()}
    out["stored"] = {name: stored(name) for name in ("frames", "small", "blocks")}

    # 0031: catalog statements for a GET of a node 3 levels deep, and answers for paths.
    c.post("/api/v1/metadata/run", headers=key, json={"id": "primary", "structure_family": "container",
                                                       "specs": [], "data_sources": [], "metadata": {}})
    c.post("/api/v1/metadata/run/primary", headers=key, json=array_node("cam", (1, 8, 8), [(1,), (8,), (8,)]))
    engine = app.state.root_tree.context.engine
    statements = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql))
    c.get("/api/v1/metadata/run/primary/cam", headers=key)
    # A node lookup selects from nodes (joined to itself per level); selectin loads select
    # from data_sources, structures, access tags, assets.
    out["metadata_statements"] = [s.split("FROM", 1)[1].split()[0] for s in statements if "FROM" in s]
    statements.clear()
    c.get("/api/v1/array/full/run/frames?slice=0", headers=octets)
    out["frame_statements"] = [s.split("FROM", 1)[1].split()[0] for s in statements if "FROM" in s]
    out["answers"] = {p: [r.status_code, r.json()["data"]["id"] if r.status_code == 200 else None]
                      for p in ("run", "run/primary", "run/primary/cam", "run/primary/nope", "nope/primary/cam")
                      for r in [c.get(f"/api/v1/metadata/{p}", headers=key)]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probes():
    return probe_pair(PROBE)


def test_0029_0030_every_byte_read_back_is_the_same(probes):
    released, patched = probes
    for name, (got, want) in patched["reads"].items():
        assert got == want, f"patched: {name} read back differs from what was written"
    for name, (got, want) in released["reads"].items():
        assert got == want, f"released: {name} read back differs"


def test_0029_frames_stored_one_per_chunk_with_bitshuffled_lz4(probes):
    released, patched = probes
    assert released["stored"]["frames"] == {"chunks": [16, 256, 256], "codecs": ["bytes", "zstd"]}
    # 128 KiB frames: 4 in 512 KiB, and 4 divides the upload chunk (16).
    assert patched["stored"]["frames"] == {"chunks": [4, 256, 256], "codecs": ["bytes", "blosc/lz4/bitshuffle"]}
    # 8 KiB frames: 64 would fit, but the upload chunk holds 1.
    assert patched["stored"]["small"]["chunks"] == [1, 64, 64]
    # 256 KiB frames in blocks of 5: 2 would fit, but only a divisor of the block keeps
    # blocks written at once (by several servers) off each other's stored chunks.
    assert patched["stored"]["blocks"] == {"chunks": [1, 256, 256], "codecs": ["bytes", "blosc/lz4/bitshuffle"]}


def test_0029_stored_chunks_for_awkward_shapes():
    """Frames per stored chunk: up to 512 KiB, a divisor of the block when the frame axis has
    several blocks, anything when it has one; empty arrays and 2-D ones as declared."""
    from tiled.adapters.zarr import stored_chunks

    u16 = 2
    assert stored_chunks(((1009,), (64,), (64,)), u16) == (64, 64, 64)  # one block: no divisor needed
    assert stored_chunks(((1009, 1009), (64,), (64,)), u16) == (1, 64, 64)  # 1009 is prime
    assert stored_chunks(((100, 100), (64,), (64,)), u16) == (50, 64, 64)
    assert stored_chunks(((0,), (512,), (512,)), u16) == (0, 512, 512)
    assert stored_chunks(((12,), (883,), (883,)), u16) == (1, 883, 883)
    assert stored_chunks(((2, 2), (3,), (64,), (64,)), u16) == (1, 3, 64, 64)
    assert stored_chunks(((4096,), (4096,)), u16) == (4096, 4096)


def test_0030_large_writes_reach_subscribers_as_references_after_they_are_stored(probes):
    released, patched = probes
    # As released: every write copied into the streaming cache.
    assert [m[0] for m in released["stream"]["put_full_2MiB"]] == ["array-data"]
    assert released["stream"]["put_full_2MiB"][0][2] == 2 * 2**20
    # Patched: more than 1 MiB is an array-ref naming the slice written, with no payload.
    assert patched["stream"]["put_full_2MiB"] == [["array-ref", None, 0]]
    assert patched["stream"]["put_block_1.25MiB"] == [["array-ref", {"offset": [5, 0, 0], "shape": [5, 256, 256]}, 0]]
    # 1 MiB or less stays inline, as released: a live viewer gets the frame in the message.
    for label in ("patch_512KiB", "put_full_8KiB"):
        assert patched["stream"][label] == released["stream"][label]
        assert patched["stream"][label][0][0] == "array-data" and patched["stream"][label][0][2] > 0


@pytest.fixture(scope="module")
def without(site_without):
    """The probe on the series with 0031, then with 0032, left out (each alone)."""
    from concurrent.futures import ThreadPoolExecutor

    names = {"0031": "0031-path-found-in-one-query-without-access-policy.patch",
             "0032": "0032-node-and-data-sources-in-one-statement.patch"}
    sites = {k: site_without(name) for k, name in names.items()}
    with ThreadPoolExecutor(2) as pool:
        runs = {k: pool.submit(probe_tiled_stack, PROBE, site=site) for k, site in sites.items()}
        return {k: run.result() for k, run in runs.items()}


def test_0031_0032_a_node_in_one_statement_with_the_same_answers(probes, without):
    """The table each statement reads FROM (in any order), for a metadata read three levels
    deep and a frame read."""
    released, patched = probes
    assert patched["answers"] == released["answers"] == without["0031"]["answers"] == without["0032"]["answers"]
    assert patched["answers"]["run/primary/cam"] == [200, "cam"]
    assert patched["answers"]["run/primary/nope"][0] == 404
    # As released: per level, the node and selectin loads of its data sources and access
    # tags, then the structures; a frame read then loads the assets in four more.
    assert sorted(released["metadata_statements"]) == sorted(["nodes", "data_sources", "nodes"] * 3 + ["structures"])
    # 0031 alone: one lookup for the path (with its selectin loads).
    assert sorted(without["0032"]["metadata_statements"]) == ["data_sources", "nodes", "nodes", "structures"]
    # 0032 alone: a lookup per level, each one statement.
    assert without["0031"]["metadata_statements"] == ["nodes"] * 3
    # Both: one statement; a frame read adds two for its assets.
    assert patched["metadata_statements"] == ["nodes"]
    assert sorted(patched["frame_statements"]) == ["data_source_asset_association", "data_sources", "nodes"]
    assert len(released["frame_statements"]) == 11
