"""Live tier: `make backup` under a read and write load → `make clean` → `make up` →
`make restore` gives back every array, table, Bluesky run and metadata, byte for byte;
a damaged backup and a stack that already holds data are refused with what to do."""

import shutil
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from bluesky.plans import scan
from tiled.client import from_uri

from conftest import make
from load_clients import NodeWriter, Readers, reading_paths, Scans, incomplete_runs, keys_in_catalog
from scripts.acquire import devices, writing_engine

# `make clean` wipes the shared stack (then restores it): after every other live test.
pytestmark = [pytest.mark.live, pytest.mark.last]


def test_backup_clean_restore_gives_back_everything(stack, tiled, api_key, tmp_path):
    rng = np.random.default_rng(7)
    tiled.write_array(rng.normal(size=(64, 80)), key="backup_array", metadata={"sample": "LaB6"})
    frame = pd.DataFrame({"x": np.arange(40, dtype="int64"), "y": rng.normal(size=40)})
    table = tiled.create_appendable_table(pa.Schema.from_pandas(frame, preserve_index=False), key="backup_table")
    table.append_partition(0, pa.Table.from_pandas(frame, preserve_index=False))
    motor, det, _ = devices()
    (uid,) = writing_engine(tiled)(scan([det], motor, -1, 1, 9))

    def state(client):
        run = client[uid]
        return {"top": {key: dict(client[key].metadata) for key in keys},
                "array": client["backup_array"].read().tobytes(),
                "table": client["backup_table"].read().to_dict("list"),
                "run": (dict(run.metadata), run["primary"].base["internal"].read().sort_values("seq_num").to_dict("list"))}

    keys = list(tiled)
    before = state(tiled)
    backup = tmp_path / "backup"
    parent = "backup_load"
    tiled.create_container(parent)
    # Writers and readers keep going while the backup runs, as they would in beamtime.
    with Readers(stack.local_url, api_key, reading_paths(tiled, parent)) as load, \
            NodeWriter(stack.local_url, api_key, parent) as writer, Scans(stack.local_url, api_key) as scans:
        time.sleep(3)
        started = time.monotonic()
        done = make("backup", stack.env_path, BACKUP_DIR=str(backup))
        took = time.monotonic() - started
        time.sleep(1)
    assert "backup of" in done.stdout and (backup / "manifest.json").exists()
    # For Prometheus (alert BackupTooOld), monitoring on or off.
    recorded = (stack.metrics_dir / "tiled_stack_last_backup_timestamp_seconds.prom").read_text()
    assert abs(float(recorded.split()[-1]) - time.time()) < took + 60, recorded
    reads = [o for *_, o in load.results]
    assert reads and set(reads) == {200}, "a read failed during the backup"
    assert set(writer.outcomes.values()) == {200} and not scans.errors(), "a write failed during the backup"

    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    with open(damaged / "arrays.tar", "r+b") as f:
        f.seek(600)
        f.write(b"\xff")
    refused = make("restore", stack.env_path, check=False, BACKUP=str(damaged))
    assert refused.returncode != 0 and "does not match its checksum" in refused.stdout

    refused = make("restore", stack.env_path, check=False, BACKUP=str(backup))
    assert refused.returncode != 0 and "already holds data" in refused.stdout and "FORCE=1" in refused.stdout

    make("clean", stack.env_path, FORCE="1")
    make("up", stack.env_path)
    assert list(from_uri(stack.local_url, api_key=api_key)) == []
    make("restore", stack.env_path, BACKUP=str(backup))

    restored = from_uri(stack.local_url, api_key=api_key)
    after = state(restored)
    assert after == before
    # The backup is a point in time during the load: everything answered before it began
    # is there, nothing is there that was not written, and every restored run reads back.
    nodes = keys_in_catalog(restored, parent)
    answered_before = [k for k, t in writer.finished.items() if t < started]
    runs = [uid for uid, *_ in scans.results if uid and uid in restored]
    print(f"\nbackup under load took {took:.1f}s; from 3 s before it to 1 s after: {len(reads)} reads, "
          f"{len(writer.outcomes)} creates and "
          f"{len(scans.results)} Bluesky scans, none failed; restored {len(after['top'])} top-level nodes "
          f"(among them an array, a table, a {len(after['run'][1]['seq_num'])}-event run) equal, {len(nodes)} of the "
          f"{len(writer.outcomes)} created nodes ({len(answered_before)} answered before the backup began), "
          f"{len(runs)} of the scans")
    assert set(answered_before) <= set(nodes) <= set(writer.outcomes)
    assert not incomplete_runs(restored, scans.written(until=started)), "a run finished before the backup is incomplete"
    # A run mid-write at backup time may lack its stop document, its stream (made with the
    # descriptor) or its event table (made with the first event); rows it has are events
    # 1..k, each once.
    for uid in runs:
        run = restored[uid]
        if "primary" in run and "internal" in run["primary"].base:
            seq = sorted(run["primary"].base["internal"].read()["seq_num"])
            assert seq == list(range(1, len(seq) + 1)), (uid, seq)
