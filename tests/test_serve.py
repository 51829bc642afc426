"""`make serve` (single process) behaviour that the conformance suite does not cover."""

import re
import socket
from pathlib import Path

import numpy as np
from tiled.client import from_uri

from conformance.conftest import ServeProcess
from conftest import make


def test_persistent_data_survives_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    array = np.arange(1000, dtype="int32")
    first = ServeProcess(tmp_path / "first.log", DATA_DIR=str(data_dir))
    from_uri(first.url, api_key=first.api_key).write_array(array, key="kept", metadata={"n": 1})
    assert "✓ Tiled stopped" in first.stop()
    second = ServeProcess(tmp_path / "second.log", DATA_DIR=str(data_dir))
    try:
        node = from_uri(second.url, api_key=second.api_key)["kept"]
        assert node.read().tobytes() == array.tobytes() and node.metadata["n"] == 1
    finally:
        second.stop()
    assert (data_dir / "catalog.db").exists()


def test_temporary_storage_is_gone_after_stop(tmp_path):
    server = ServeProcess(tmp_path / "serve.log", TEMP="1")
    from_uri(server.url, api_key=server.api_key).write_array(np.zeros(3), key="gone")
    output = server.stop()
    assert "✓ Tiled stopped" in output, output
    temp_dir = Path(re.search(r"temporary storage in (\S+)", output).group(1))
    assert temp_dir.name.startswith("tiled-serve-") and not temp_dir.exists()


def test_a_taken_port_gets_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = make("serve", tmp_path / "unused.env", check=False, PORT=str(port), TEMP="1")
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stdout and "PORT=" in done.stdout


def test_a_bad_api_key_is_refused(tmp_path):
    done = make("serve", tmp_path / "unused.env", check=False, API_KEY="not-allowed!", TEMP="1")
    assert done.returncode != 0 and "API_KEY may hold only letters and digits" in done.stdout
