"""The benchmark's data and workloads.

Data lives under the stack's `/bench` container and is reused by later runs:
`big` (N child nodes with metadata), `arr` (a chunked uint16 image), `tbl`
(an appendable table in the SQL storage database).
"""

import asyncio
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import numpy as np
import pyarrow as pa

from scripts.lib.say import Failure, ok, step

ROOT_KEY = "bench"
COLORS = ["red", "green", "blue"]
ARRAY_SHAPE, ARRAY_CHUNK = (2048, 2048), 256  # 64 blocks of 128 KiB
TABLE_ROWS = 1000
ARROW = "application/vnd.apache.arrow.file"


def arrow_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


async def create_children(url: str, api_key: str, wanted: int, have: int, concurrency: int = 8) -> None:
    headers = {"Authorization": f"Apikey {api_key}"}
    todo = iter(range(have, wanted))

    async def worker(session):
        for i in todo:
            body = {"id": f"n{i:05d}", "structure_family": "container", "specs": [], "data_sources": [],
                    "metadata": {"i": i, "color": COLORS[i % 3], "sample": f"S{i % 97}"}}
            async with session.post(f"{url}/api/v1/metadata/{ROOT_KEY}/big", json=body, headers=headers) as r:
                if r.status not in (200, 409):  # 409: made by an interrupted earlier run
                    raise Failure(f"creating bench node n{i:05d} failed: HTTP {r.status} {await r.text()}",
                                  "check `make status` and `make logs SERVICE=tiled`")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def prepare(url: str, api_key: str, nodes: int):
    """Create (or reuse) the benchmark data; return the tiled client node of /bench."""
    import dask.array
    from tiled.client import from_uri

    client = from_uri(url, api_key=api_key)
    root = client[ROOT_KEY] if ROOT_KEY in client else client.create_container(ROOT_KEY)
    big = root["big"] if "big" in root else root.create_container("big")
    have = len(big)
    if have < nodes:
        step(f"creating {nodes - have} metadata nodes under /{ROOT_KEY}/big (once; later runs reuse them)")
        t0 = time.perf_counter()
        asyncio.run(create_children(url, api_key, nodes, have))
        ok(f"{nodes - have} nodes in {time.perf_counter() - t0:.0f}s")
    if "arr" not in root:
        image = (np.arange(np.prod(ARRAY_SHAPE), dtype="uint32") % 65521).astype("uint16").reshape(ARRAY_SHAPE)
        root.write_array(dask.array.from_array(image, chunks=ARRAY_CHUNK), key="arr")
    if "tbl" not in root:
        rng = np.random.default_rng(0)
        table = pa.table({"seq_num": np.arange(1, TABLE_ROWS + 1), "time": np.linspace(0, 100, TABLE_ROWS),
                          **{f"det{k}": rng.normal(size=TABLE_ROWS) for k in range(4)}})
        node = root.create_appendable_table(table.schema, key="tbl")
        node.append_partition(0, table)
    return root


def http_workloads(api_key: str, nodes: int, append_key: str) -> dict:
    """name → request(session, rng, base_url) for the closed-loop harness."""
    headers = {"Authorization": f"Apikey {api_key}"}
    blocks = ARRAY_SHAPE[0] // ARRAY_CHUNK
    red = 'filter[eq][condition][key]=color&filter[eq][condition][value]="red"'
    batch = arrow_bytes(pa.table({"seq_num": np.arange(10), "det": np.linspace(0, 1, 10)}))

    async def fetch(session, method, url, **kw):
        async with session.request(method, url, headers={**headers, **kw.pop("headers", {})}, **kw) as r:
            await r.read()
            return r.status

    return {
        # one node of the 10k-node container, by key
        "metadata": lambda s, rng, u: fetch(s, "GET", f"{u}/api/v1/metadata/{ROOT_KEY}/big/n{rng.randrange(nodes):05d}"),
        # a filtered page from anywhere in the container
        "search": lambda s, rng, u: fetch(
            s, "GET", f"{u}/api/v1/search/{ROOT_KEY}/big?{red}&page[offset]={rng.randrange(nodes // 3 - 20)}"
                      f"&page[limit]=20"),
        "array": lambda s, rng, u: fetch(
            s, "GET", f"{u}/api/v1/array/block/{ROOT_KEY}/arr?block={rng.randrange(blocks)},{rng.randrange(blocks)}"),
        "table": lambda s, rng, u: fetch(s, "GET", f"{u}/api/v1/table/partition/{ROOT_KEY}/tbl?partition=0",
                                         headers={"Accept": ARROW}),
        "append": lambda s, rng, u: fetch(s, "PATCH", f"{u}/api/v1/table/partition/{ROOT_KEY}/{append_key}?partition=0",
                                          data=batch, headers={"Content-Type": ARROW}),
    }


def create_append_table(root, key: str) -> None:
    schema = pa.schema([("seq_num", pa.int64()), ("det", pa.float64())])
    root.create_appendable_table(schema, key=key)


def bluesky_runs(url: str, api_key: str, writers: int, events: int) -> dict:
    """`writers` RunEngines in threads, each a count of `events` through TiledWriter (batch_size=1)."""
    from bluesky.plans import count
    from tiled.client import from_uri

    from scripts.acquire import devices, writing_engine

    def one(index):
        engine = writing_engine(from_uri(url, api_key=api_key))
        motor, det, _ = devices()
        (uid,) = engine(count([det, motor], num=events), purpose="bench")
        return uid

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        uids = list(pool.map(one, range(writers)))
    seconds = time.perf_counter() - t0
    client = from_uri(url, api_key=api_key)
    # Rows of each run's event table (len() of the xarray view would count variables).
    stored = sum(len(client[uid]["primary"].base["internal"].read()) for uid in uids)
    return {"writers": writers, "events": writers * events, "stored": stored, "seconds": seconds,
            "events_per_s": writers * events / seconds, "runs_per_s": writers / seconds}


class Arrivals:
    """One subscriber: arrival time of each update value (callbacks are weakly held: keep this)."""

    def __init__(self):
        self.arrived = {}
        self.lock = threading.Lock()

    def on_data(self, update):
        now = time.perf_counter()
        for value in update.data()["value"]:
            with self.lock:
                self.arrived[int(value)] = now


def streaming(writer_url: str, subscriber_urls: list[str], api_key: str, key_prefix: str,
              subscribers: int, rate_hz: float, seconds: float) -> dict:
    """One node written at `rate_hz` through `writer_url`; `subscribers` websockets on `subscriber_urls`."""
    from tiled.client import from_uri

    writer_root = from_uri(writer_url, api_key=api_key)[ROOT_KEY]
    key = f"{key_prefix}_{time.time_ns()}"
    node = writer_root.create_appendable_table(pa.schema([("value", pa.int64())]), key=key)
    node.append_partition(0, pa.table({"value": [-1]}))
    collectors, subscriptions = [], []
    for i in range(subscribers):
        sub_node = from_uri(subscriber_urls[i % len(subscriber_urls)], api_key=api_key)[ROOT_KEY][key]
        collector = Arrivals()
        subscription = sub_node.subscribe()
        subscription.new_data.add_callback(collector.on_data)
        subscription.start_in_thread()
        collectors.append(collector)
        subscriptions.append(subscription)
    time.sleep(1.0)  # every websocket is open before the first update
    sent = {}
    updates = int(rate_hz * seconds)
    t_next = time.perf_counter()
    for value in range(updates):
        t_next += 1 / rate_hz
        sent[value] = time.perf_counter()
        node.append_partition(0, pa.table({"value": [value]}))
        time.sleep(max(0.0, t_next - time.perf_counter()))
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and any(len(c.arrived) < updates for c in collectors):
        time.sleep(0.05)
    for subscription in subscriptions:
        subscription.disconnect()
    latencies = sorted((c.arrived[v] - sent[v]) * 1000 for c in collectors for v in sent if v in c.arrived)
    expected = updates * subscribers

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")

    return {"subscribers": subscribers, "rate_hz": rate_hz, "updates": updates, "expected": expected,
            "delivered": len(latencies), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": latencies[-1] if latencies else float("nan")}


def as_json(data) -> str:
    return json.dumps(data, indent=2, default=float)
