"""`make demo`: a Bluesky RunEngine writing two real plans into the stack through TiledWriter.

A scalar detector scan (ophyd.sim's `det` over `motor`) and a 2-D image
detector count. Prints each run's uid and where to browse it.

    .venv/bin/python -m scripts.acquire            # against the stack in .env
    .venv/bin/python -m scripts.acquire --points 21 --frames 5
"""

import argparse

import numpy as np
from bluesky import RunEngine
from bluesky.plans import count, scan
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import DirectImage, SynAxis, SynGauss
from tiled.client import from_uri

from scripts.lib.compose import Stack
from scripts.lib.say import note, ok, run_main, step


class Camera(DirectImage):
    """A 2-D detector whose descriptor declares its pixel type, as area detectors do.

    Without `dtype_numpy`, TiledWriter stores the frames as float64.
    """

    def describe(self):
        description = super().describe()
        for key in description.values():
            key["dtype_numpy"] = np.dtype("uint16").str
        return description


def devices(seed: int = 0):
    """A motor, a Gaussian scalar detector on it, and a 48×64 uint16 camera."""
    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0.0, Imax=1000.0, sigma=0.5)
    rng = np.random.default_rng(seed)
    camera = Camera(name="camera", func=lambda: rng.integers(0, 4096, (48, 64), dtype="uint16"))
    return motor, det, camera


def writing_engine(client, *, main_thread: bool = False) -> RunEngine:
    """A RunEngine whose TiledWriter sends every document into `client` as it happens.

    batch_size=1: each event reaches Tiled (and its subscribers) at once. Off the main
    thread the RunEngine must not install its Ctrl-C handler (context_managers=[]).
    """
    engine = RunEngine({}, call_returns_result=False, **({} if main_thread else {"context_managers": []}))
    engine.subscribe(TiledWriter(client, batch_size=1))
    return engine


def acquire(url: str, api_key: str, points: int = 11, frames: int = 3, documents: list | None = None,
            verify: str | bool = True):
    """Run the scan and the count; return their uids. `documents` collects every document emitted.

    `verify`: the CA file an https:// stack's certificate is checked against (True: the system's).
    """
    engine = writing_engine(from_uri(url, api_key=api_key, verify=verify), main_thread=True)
    if documents is not None:
        engine.subscribe(lambda name, doc: documents.append((name, doc)))
    motor, det, camera = devices()
    (scan_uid,) = engine(scan([det], motor, -1, 1, points), purpose="tiled-stack demo scan")
    (count_uid,) = engine(count([camera], frames), purpose="tiled-stack demo count")
    return scan_uid, count_uid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=11)
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    stack = Stack()
    step(f"running a {args.points}-point scan and a {args.frames}-frame image count into {stack.url}")
    uids = acquire(stack.local_url, stack.values["TILED_SINGLE_USER_API_KEY"], args.points, args.frames,
                   verify=stack.verify)
    client = from_uri(stack.local_url, api_key=stack.values["TILED_SINGLE_USER_API_KEY"], verify=stack.verify)
    for uid in uids:
        run = client[uid]
        streams = ", ".join(run)
        ok(f"run {uid}  plan={run.metadata['start']['plan_name']}  streams: {streams}")
        note(f"browse: {stack.url}/api/v1/metadata/{uid}")
    note("read back: from tiled.client import from_uri; "
         f"from_uri('{stack.url}', api_key=KEY)['{uids[0]}']['primary'].read()")


if __name__ == "__main__":
    run_main(main)
