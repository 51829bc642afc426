"""Option 1 of "Deploy Tiled for Bluesky": Tiled embedded in your Python session.

`SimpleTiledServer` runs Tiled on a background thread on localhost: temporary
storage by default, persistent in `directory=…`, and `readable_storage=…` for
detector files. A Bluesky RunEngine writes into it through TiledWriter.

    .venv/bin/python examples/embedded.py                 # temporary
    .venv/bin/python examples/embedded.py ./my-data       # persistent, reused on the next run
"""

import sys

from bluesky import RunEngine
from bluesky.plans import scan
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det, motor
from tiled.client import from_uri
from tiled.server import SimpleTiledServer


def start(directory=None, readable_storage=None) -> SimpleTiledServer:
    """Temporary storage when directory is None; else an SQLite catalog + DuckDB + arrays in it."""
    return SimpleTiledServer(directory=directory, readable_storage=readable_storage)


def write_scan(server: SimpleTiledServer, points: int = 11) -> str:
    client = from_uri(server.uri)
    engine = RunEngine({}, call_returns_result=False, context_managers=[])
    engine.subscribe(TiledWriter(client, batch_size=1))
    (uid,) = engine(scan([det], motor, -1, 1, points))
    return uid


def main() -> None:
    server = start(sys.argv[1] if len(sys.argv) > 1 else None)
    uid = write_scan(server)
    run = from_uri(server.uri)[uid]
    print(f"run {uid}: {run.metadata['start']['plan_name']}, det = {run['primary'].read()['det'].values}")
    print(f"storage: {server.directory}   browse: {server.web_ui_link}")
    server.close()


if __name__ == "__main__":
    main()
