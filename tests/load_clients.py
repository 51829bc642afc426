"""The load the live resilience tests run during each fault, through HAProxy.

Readers read metadata, an array chunk and a table partition in a loop; NodeWriter creates nodes with unique
keys one after another; bluesky_scans runs scans through TiledWriter. Each records
every outcome, so a test can count failed requests and check that every write it
was told succeeded is in the catalog exactly once.
"""

import time

import httpx
import numpy as np
import pyarrow as pa
from bluesky.plans import scan
from tiled.client import from_uri

from benchmarks.load import Background
from scripts.acquire import devices, writing_engine


TABLE_PATH = "/api/v1/table/partition/load_data/tbl?partition=0"


def reading_paths(tiled, parent: str) -> list[str]:
    """What Readers read in turn: `parent`'s metadata, an array chunk and a table partition
    (the array and the table are made once per stack, in /load_data)."""
    if "load_data" not in tiled:
        data = tiled.create_container("load_data")
        data.write_array(np.arange(128 * 128, dtype="uint16").reshape(128, 128), key="arr")
        frame = pa.table({"seq_num": np.arange(1, 201), "det": np.linspace(0, 1, 200)})
        data.create_appendable_table(frame.schema, key="tbl").append_partition(0, frame)
    return [f"/api/v1/metadata/{parent}", "/api/v1/array/block/load_data/arr?block=0,0", TABLE_PATH]


def authorized(url: str, api_key: str, timeout: float, verify: str | bool = True) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Apikey {api_key}"}, timeout=timeout, verify=verify)


def burst(url: str, api_key: str, path: str, n: int) -> list[object]:
    """`n` GETs of `path` at once (so a replica's pool hands out `n` connections): statuses or exception names."""
    from concurrent.futures import ThreadPoolExecutor

    def get(_):
        with authorized(url, api_key, 30) as c:
            try:
                return c.get(path).status_code
            except httpx.HTTPError as err:
                return type(err).__name__

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(get, range(n)))


class Readers(Background):
    """Clients reading through HAProxy in a loop, each path in turn: (start, end, status or exception name)."""

    threads_wanted = 3

    def __init__(self, url: str, api_key: str, paths: list[str], verify: str | bool = True):
        self.url, self.api_key, self.paths, self.verify = url, api_key, paths, verify
        self.results: list[tuple[float, float, object]] = []
        super().__init__()

    def run(self):
        with authorized(self.url, self.api_key, 10, self.verify) as c:
            while not self.stopping.is_set():
                t = time.monotonic()
                try:
                    outcome = c.get(self.paths[len(self.results) % len(self.paths)]).status_code
                except httpx.HTTPError as err:
                    outcome = type(err).__name__
                self.results.append((t, time.monotonic(), outcome))
                time.sleep(0.02)


def wait_until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


class NodeWriter(Background):
    """Creates nodes with unique keys through HAProxy, one after another: key → outcome."""

    def __init__(self, url: str, api_key: str, parent: str):
        self.url, self.api_key, self.parent = url, api_key, parent
        self.outcomes: dict[str, object] = {}
        self.finished: dict[str, float] = {}  # key → time.monotonic() when its answer came
        super().__init__()

    def post(self, client, key):
        body = {"id": key, "structure_family": "container", "specs": [], "data_sources": [], "metadata": {"k": key}}
        try:
            return client.post(f"/api/v1/metadata/{self.parent}", json=body).status_code
        except httpx.HTTPError as err:
            return type(err).__name__

    def run(self):
        with authorized(self.url, self.api_key, 30) as c:
            i = 0
            while not self.stopping.is_set():
                key = f"w{i:05d}"
                self.outcomes[key] = self.post(c, key)
                self.finished[key] = time.monotonic()
                i += 1
                time.sleep(0.05)

    def retry_failed(self) -> dict[str, object]:
        """Retry each failed create once: a 409 means the first attempt had landed."""
        with authorized(self.url, self.api_key, 30) as c:
            return {key: self.post(c, key) for key, outcome in self.outcomes.items() if outcome != 200}


def keys_in_catalog(tiled, parent: str) -> list[str]:
    return [key for key, _ in tiled[parent].items()]


class Scans(Background):
    """Bluesky scans of 10 points through TiledWriter, one after another: (uid or None, error, start, end)."""

    def __init__(self, url: str, api_key: str, verify: str | bool = True, md: dict | None = None):
        self.url, self.api_key, self.verify, self.md = url, api_key, verify, md or {}
        self.results: list[tuple[str | None, str | None, float, float]] = []
        super().__init__()

    def run(self):
        motor, det, _ = devices()
        while not self.stopping.is_set():
            engine = writing_engine(from_uri(self.url, api_key=self.api_key, verify=self.verify))
            engine.md.update(self.md)
            t = time.monotonic()
            try:
                (uid,) = engine(scan([det], motor, -1, 1, 10))
                self.results.append((uid, None, t, time.monotonic()))
            except Exception as err:  # the writer saw a failure: this run is not reported as written
                self.results.append((None, repr(err)[:200], t, time.monotonic()))

    def written(self, until: float = float("inf")) -> list[str]:
        """The uids of the scans the writer reported as written, finished before `until`."""
        return [uid for uid, _, _, end in self.results if uid and end < until]

    def errors(self) -> list[str]:
        return [error for _, error, *_ in self.results if error]


def incomplete_runs(tiled, uids) -> list[tuple]:
    """Runs that are not complete in the catalog: no successful stop, or not events 1..10 exactly once."""
    incomplete = []
    for uid in uids:
        run = tiled[uid]
        stop = run.metadata.get("stop") or {}
        seq = list(run["primary"].base["internal"].read()["seq_num"]) if "primary" in run else []
        # Rows come back in storage order, not append order (no ORDER BY upstream): compare sorted.
        if stop.get("exit_status") != "success" or sorted(seq) != list(range(1, 11)):
            incomplete.append((uid, stop.get("exit_status"), seq))
    return incomplete
