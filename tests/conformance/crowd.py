"""A crowd of concurrent clients against one deployment, while one writer appends.

What a beamline does at once: a RunEngine appends rows while live plots, notebooks and
analysis scripts read. `run()` starts CLIENTS readers (one HTTP connection each), each
cycling through metadata, a filtered and sorted search, the container listing
(`/container/full`), full and partition reads of the table being appended to, and array
reads; plus one writer appending to that table. Every answer is checked, not only its
status: a table read must be a prefix of what was written, an array read the array's bytes,
a search its ten matching keys in order. Returns a Result that the test judges.
"""

import asyncio
import collections
import dataclasses
import json
import threading
import time

import httpx
import numpy as np
import pyarrow as pa
from tiled.client import from_uri

CLIENTS = 50
ARROW = "application/vnd.apache.arrow.file"
COLORS = ("red", "blue")


@dataclasses.dataclass
class Result:
    seconds: float
    requests: collections.Counter  # (kind, status) -> count
    errors: collections.Counter  # (kind, what went wrong) -> count
    examples: list  # the first few errors, in full
    appended: int  # rows the writer was told were stored
    append_errors: list
    read_back: list  # the table's `seq` column, read after the crowd stopped

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def summary(self) -> str:
        by_kind = collections.defaultdict(dict)
        for (kind, status), n in sorted(self.requests.items(), key=lambda item: (item[0][0], str(item[0][1]))):
            by_kind[kind][status] = n
        lines = [f"{self.total} requests from {CLIENTS} clients in {self.seconds:.0f} s "
                 f"({self.total / self.seconds:.0f}/s); {self.appended} rows appended"]
        lines += [f"  {kind:16} {statuses}" for kind, statuses in by_kind.items()]
        lines += [f"  error {kind}: {what} ×{n}" for (kind, what), n in self.errors.items()]
        return "\n".join(lines)


def prepare(url: str, api_key: str, name: str) -> dict:
    """The nodes the crowd reads: /name/{tbl, arr, s00…s19}; returns what reads must match."""
    tiled = from_uri(url, api_key=api_key)
    parent = tiled.create_container(name)
    array = np.arange(64 * 64, dtype="float64").reshape(64, 64)
    parent.write_array(array, key="arr")
    first = pa.table({"seq": np.arange(100, dtype="int64"), "value": np.linspace(0, 1, 100)})
    parent.create_appendable_table(first.schema, key="tbl").append_partition(0, first)
    for i in range(20):
        parent.create_container(f"s{i:02}", metadata={"color": COLORS[i % 2], "name": f"n{i:02}"})
    red_by_name_descending = [f"s{i:02}" for i in range(18, -1, -2)]
    return {"array": array.tobytes(), "rows": 100, "red": red_by_name_descending}


def paths(name: str) -> dict:
    search = (f"/api/v1/search/{name}?filter[eq][condition][key]=color"
              f"&filter[eq][condition][value]=%22red%22&sort=-name&fields=&page[limit]=20")
    return {
        "metadata": f"/api/v1/metadata/{name}/tbl",
        "search": search,
        "container": f"/api/v1/container/full/{name}?format=application/x-hdf5",
        "table-full": f"/api/v1/table/full/{name}/tbl?format={ARROW}",
        "table-part": f"/api/v1/table/partition/{name}/tbl?partition=0&format={ARROW}",
        "array-full": f"/api/v1/array/full/{name}/arr?format=application/octet-stream",
        "array-block": f"/api/v1/array/block/{name}/arr?block=0,0&format=application/octet-stream",
    }


def check(kind: str, response: httpx.Response, expected: dict) -> str | None:
    """What is wrong with a 200 answer, or None."""
    body = response.content
    if kind in ("table-full", "table-part"):
        seq = pa.ipc.open_file(pa.py_buffer(body)).read_all().column("seq").to_pylist()
        if len(seq) < expected["rows"] or seq != list(range(len(seq))):
            return f"table of {len(seq)} rows is not a prefix of what was written"
    elif kind.startswith("array"):
        if body != expected["array"]:
            return f"array of {len(body)} bytes differs"
    elif kind == "search":
        keys = [item["id"] for item in response.json()["data"]]
        if keys != expected["red"]:
            return f"search gave {keys}"
    elif kind == "metadata":
        if response.json()["data"]["attributes"]["structure_family"] != "table":
            return "metadata of the wrong node"
    elif kind == "container" and not body.startswith(b"\x89HDF"):
        return "container export is not HDF5"
    return None


async def reader(url, api_key, plan, expected, deadline, record, offset):
    kinds = list(plan)
    headers = {"Authorization": f"Apikey {api_key}"}
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http:
        i = offset
        while time.monotonic() < deadline:
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                response = await http.get(plan[kind])
            except httpx.HTTPError as err:
                record(kind, type(err).__name__, f"{kind}: {err!r}")
                await asyncio.sleep(0.2)  # a dead server: do not spin
                continue
            if response.status_code != 200:  # every read here must succeed: any other status is wrong
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
            else:
                try:
                    problem = check(kind, response, expected)
                except Exception as err:  # an answer that does not even parse is wrong
                    problem = f"unreadable answer: {err!r}"
            record(kind, response.status_code, problem and f"{kind}: {problem}")


def writer(url, api_key, name, deadline, rows_per_append, state):
    """Appends `rows_per_append` rows at a time (seq continuing from 100) until the deadline."""
    node = from_uri(url, api_key=api_key)[name]["tbl"]
    seq = 100
    while time.monotonic() < deadline:
        part = pa.table({"seq": np.arange(seq, seq + rows_per_append, dtype="int64"),
                         "value": np.zeros(rows_per_append)})
        try:
            node.append_partition(0, part)
        except Exception as err:  # noqa: BLE001: reported, and the read-back check decides
            state["errors"].append(repr(err)[:300])
            break  # what comes after a lost append could never be a prefix
        seq += rows_per_append
        state["appended"] = seq - 100
        time.sleep(0.05)


def run(url: str, api_key: str, name: str, seconds: float, clients: int = CLIENTS) -> Result:
    expected = prepare(url, api_key, name)
    plan = paths(name)
    requests, errors, examples = collections.Counter(), collections.Counter(), []

    def record(kind, status, problem=None):
        requests[(kind, status)] += 1
        if problem:
            errors[(kind, problem.split(": ", 1)[1][:80])] += 1
            if len(examples) < 5:
                examples.append(problem)

    state = {"appended": 0, "errors": []}
    start = time.monotonic()
    deadline = start + seconds
    appender = threading.Thread(target=writer, args=(url, api_key, name, deadline, 5, state), daemon=True)
    appender.start()

    async def crowd():
        await asyncio.gather(*(reader(url, api_key, plan, expected, deadline, record, n) for n in range(clients)))

    asyncio.run(crowd())
    appender.join(timeout=180)
    if appender.is_alive():
        state["errors"].append("the writer's last append did not return within 180 s")
    elapsed = time.monotonic() - start
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Apikey {api_key}"}, timeout=60) as http:
            table = http.get(plan["table-full"])
        read_back = (pa.ipc.open_file(pa.py_buffer(table.content)).read_all().column("seq").to_pylist()
                     if table.status_code == 200 else [f"HTTP {table.status_code}"])
    except httpx.HTTPError as err:
        read_back = [repr(err)]
    return Result(elapsed, requests, errors, examples, state["appended"], state["errors"], read_back)


if __name__ == "__main__":  # by hand: python -m tests.conformance.crowd URL KEY [SECONDS]
    import sys

    result = run(sys.argv[1], sys.argv[2], f"crowd_{time.monotonic_ns()}", float(sys.argv[3]) if len(sys.argv) > 3 else 20)
    print(result.summary())
    print(json.dumps(result.examples, indent=1))
