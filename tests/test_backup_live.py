"""Live tier: `make backup` → `make clean` → `make up` → `make restore` gives back every
array, table, Bluesky run and metadata, byte for byte; a damaged backup and a stack
that already holds data are refused with what to do."""

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from bluesky import RunEngine
from bluesky.callbacks.tiled_writer import TiledWriter
from bluesky.plans import scan
from ophyd.sim import SynAxis, SynGauss
from tiled.client import from_uri

from conftest import make

pytestmark = pytest.mark.live


def test_backup_clean_restore_gives_back_everything(stack, tiled, api_key, tmp_path):
    rng = np.random.default_rng(7)
    tiled.write_array(rng.normal(size=(64, 80)), key="backup_array", metadata={"sample": "LaB6"})
    frame = pd.DataFrame({"x": np.arange(40, dtype="int64"), "y": rng.normal(size=40)})
    table = tiled.create_appendable_table(pa.Schema.from_pandas(frame, preserve_index=False), key="backup_table")
    table.append_partition(0, pa.Table.from_pandas(frame, preserve_index=False))
    engine = RunEngine({}, call_returns_result=False, context_managers=[])
    engine.subscribe(TiledWriter(tiled, batch_size=1))
    motor = SynAxis(name="motor")
    (uid,) = engine(scan([SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)], motor, -1, 1, 9))

    def state(client):
        run = client[uid]
        return {"top": {key: dict(node.metadata) for key, node in client.items()},
                "array": client["backup_array"].read().tobytes(),
                "table": client["backup_table"].read().to_dict("list"),
                "run": (dict(run.metadata), run["primary"].base["internal"].read().to_dict("list"))}

    before = state(tiled)
    backup = tmp_path / "backup"
    done = make("backup", stack.env_path, BACKUP_DIR=str(backup))
    assert "backup of" in done.stdout and (backup / "manifest.json").exists()

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

    after = state(from_uri(stack.local_url, api_key=api_key))
    assert after == before
    print(f"\nrestored {len(after['top'])} top-level nodes, an array, a table and a {len(after['run'][1]['seq_num'])}-event run")
