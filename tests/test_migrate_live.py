"""Live tier: a beamline moving up keeps its data (make serve → make migrate → the stack)."""

import numpy as np
import pytest
from tiled.client import from_uri

from conformance.conftest import ServeProcess
from conftest import make
from scripts.acquire import acquire

pytestmark = pytest.mark.live


def test_runs_move_from_a_single_process_into_the_stack(stack, tiled, tmp_path):
    single = ServeProcess(tmp_path / "serve.log", DATA_DIR=str(tmp_path / "data"))
    try:
        scan_uid, count_uid = acquire(single.url, single.api_key, points=9, frames=2)
        source = from_uri(single.url, api_key=single.api_key)
        first = make("migrate", stack.env_path, FROM=single.url, FROM_KEY=single.api_key).stdout
        again = make("migrate", stack.env_path, FROM=single.url, FROM_KEY=single.api_key).stdout
        for uid in (scan_uid, count_uid):
            before, after = source[uid], tiled[uid]
            assert after.metadata["start"] == before.metadata["start"]
            assert after.metadata["stop"] == before.metadata["stop"]
        np.testing.assert_array_equal(tiled[scan_uid]["primary"].read()["det"].values,
                                      source[scan_uid]["primary"].read()["det"].values)
        assert (tiled[count_uid]["primary"]["camera_img"].read().tobytes()
                == source[count_uid]["primary"]["camera_img"].read().tobytes())
    finally:
        single.stop()
    assert "2 runs copied, 0 already there" in first, first
    assert "0 runs copied, 2 already there" in again, again
