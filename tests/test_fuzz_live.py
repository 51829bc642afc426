"""Live tier: requests generated from the stack's own OpenAPI document get no 5xx.

Schemathesis reads /openapi.json through HAProxy and runs every operation (DELETE
included) twice: with the API key, and with no credentials. Its phases: the examples
in the document, the coverage phase (boundary values, missing and wrong-typed
parameters, non-ASCII strings) and random fuzzing, with a fixed seed. Any 5xx fails
the test, which prints schemathesis's report with a `curl` line for each failing case.
With the key, the credentials the generator makes are replaced by the key (see
tests/fuzz_hooks.py), so that every request reaches the route's own input handling.

Nothing is excluded. What keeps it safe: tests/fuzz_hooks.py sends every `{path}`
inside a sandbox container made here, each DELETE of a node to a victim made for the
purpose, and the test checks afterwards that no catalog row, storage row or replica
outside the sandbox changed. The stateful phase is not run: Tiled's document declares no
links between operations, so it would repeat the fuzzing phase.

The figures (answers per status and operation, client errors whose body is not a clean
JSON `detail`) are printed, and written to FUZZ_OUT if it is set.
"""

import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import psycopg
import pytest

from conftest import ROOT, container_addresses, storage_dsn
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live

SEED = 20
EXAMPLES = 8  # per operation in the fuzzing phase; the coverage phase adds its own
PHASES = "examples,coverage,fuzzing"
VICTIMS = 40  # nodes made to be deleted (DELETE of a node goes to one every other call)


def catalog_dsn(stack, values) -> str:
    (address,) = container_addresses(stack, "postgres")
    return f"postgresql://tiled_catalog:{values['CATALOG_DB_PASSWORD']}@{address}:5432/tiled_catalog"


OUTSIDE = "select id from nodes where id not in (select descendant from nodes_closure where ancestor = %(sandbox)s)"


def catalog_outside(stack, values, sandbox_id: int) -> dict:
    """A digest of every catalog row that does not belong to the sandbox."""
    queries = {
        "nodes": f"select n::text from nodes n where id in ({OUTSIDE}) order by id",
        "data_sources": f"select d::text from data_sources d where node_id in ({OUTSIDE}) order by id",
        "revisions": f"select r::text from revisions r where node_id in ({OUTSIDE}) order by id",
        "assets": "select a::text from assets a join data_source_asset_association x on x.asset_id = a.id "
                  f"join data_sources d on d.id = x.data_source_id where d.node_id in ({OUTSIDE}) order by a.id",
        "webhooks": f"select w::text from webhooks w where node_id in ({OUTSIDE}) order by id",
    }
    with psycopg.connect(catalog_dsn(stack, values)) as conn:
        return {name: (len(rows := conn.execute(q, {"sandbox": sandbox_id}).fetchall()),
                       hash(tuple(r[0] for r in rows))) for name, q in queries.items()}


def storage_rows(stack, values) -> dict:
    """(table, dataset) → (rows, a digest of their contents) in the storage database."""
    digests = {}
    with psycopg.connect(storage_dsn(stack, values)) as conn:
        tables = [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")]
        for table in tables:
            for dataset, n, digest in conn.execute(
                    f'select _dataset_id, count(*), md5(string_agg(t::text, \'|\' order by t::text)) '
                    f'from "{table}" t group by 1'):
                digests[(table, dataset)] = (n, digest)
    return digests


def sandbox_datasets(stack, values, sandbox_id: int) -> set[tuple]:
    with psycopg.connect(catalog_dsn(stack, values)) as conn:
        return set(conn.execute(
            "select parameters->>'table_name', (parameters->>'dataset_id')::int from data_sources where node_id in "
            "(select descendant from nodes_closure where ancestor = %s) and parameters ? 'dataset_id'",
            (sandbox_id,)).fetchall())


def victims_left(stack, values, sandbox_id: int) -> int:
    with psycopg.connect(catalog_dsn(stack, values)) as conn:
        return conn.execute("select count(*) from nodes where parent = "
                            "(select id from nodes where parent = %s and key = 'victims')", (sandbox_id,)).fetchone()[0]


def replicas(stack) -> dict:
    return {c.name: (c.attrs["State"]["StartedAt"], c.attrs["RestartCount"])
            for c in project_containers(stack.project, "tiled", all=False)}


@pytest.fixture(scope="module")
def sandbox(tiled):
    """A container of nodes of every kind to fuzz, and victims to delete."""
    name = f"fuzz_{secrets.token_hex(3)}"
    box = tiled.create_container(name)
    box.write_array(np.arange(64, dtype="float64").reshape(8, 8), key="array")
    box.write_ragged([np.arange(3), np.arange(5)], key="ragged")
    box.write_awkward([{"x": 1, "y": [1, 2]}, {"x": 2, "y": []}], key="awkward")
    frame = pa.table({"seq_num": np.arange(1, 11), "det": np.linspace(0, 1, 10)})
    box.create_appendable_table(frame.schema, key="table").append_partition(0, frame)
    box.create_container("container").write_array(np.arange(4), key="inner")
    box.create_container("decoy")
    victims = box.create_container("victims")
    paths = []
    for i in range(VICTIMS):
        if i % 2:
            victims.write_array(np.arange(4), key=f"v{i}")
        else:
            victims.create_container(f"v{i}")
        paths.append(f"{name}/victims/v{i}")
    nodes = {kind: f"{name}/{kind}" for kind in ("array", "ragged", "awkward", "table", "container")}
    return name, {**nodes, "victims": paths}


def fuzz(stack, sandbox, log: Path, api_key: str) -> subprocess.CompletedProcess:
    name, nodes = sandbox
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "SCHEMATHESIS_HOOKS": "fuzz_hooks",
           "FUZZ_SANDBOX": name, "FUZZ_NODES": json.dumps(nodes), "FUZZ_LOG": str(log), "FUZZ_API_KEY": api_key}
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{stack.local_url}/openapi.json",
               "--checks", "not_a_server_error", "--phases", PHASES, "--seed", str(SEED),
               "--max-examples", str(EXAMPLES), "--workers", "2", "--suppress-health-check", "all",
               "--request-timeout", "60",
               "--output-truncate", "false", "--no-color"]
    return subprocess.run(command, env=env, cwd=log.parent, text=True, capture_output=True, timeout=900)


def summary(log: Path) -> tuple[dict, Counter, dict, int]:
    by_operation, unclean, first_5xx, largest = defaultdict(Counter), Counter(), {}, 0
    for line in log.read_text().splitlines():
        answer = json.loads(line)
        if 400 <= answer["status"] < 500:
            largest = max(largest, answer["bytes"])
        by_operation[answer["operation"]][answer["status"]] += 1
        if not answer["clean"]:
            unclean[answer["operation"]] += 1
        if answer["status"] >= 500:
            first_5xx.setdefault(answer["operation"], answer["head"])
    return by_operation, unclean, first_5xx, largest


def table(by_operation: dict, documented: set[str]) -> str:
    """Answers per status: a row per documented operation, then one for every other method
    the coverage phase tried on the same paths (they should get 405, or 401/403 first)."""
    rows = {op: c for op, c in by_operation.items() if op in documented}
    others = Counter()
    for op, c in by_operation.items():
        if op not in documented:
            others.update(c)
    rows["(undocumented methods, all paths)"] = others
    total = Counter()
    for c in by_operation.values():
        total.update(c)
    rows["(all)"] = total
    statuses = sorted(total)
    lines = ["operation".ljust(46) + "".join(f"{s:>6}" for s in statuses)]
    for op in [*sorted(documented & set(rows)), "(undocumented methods, all paths)", "(all)"]:
        lines.append(op[:46].ljust(46) + "".join(f"{rows[op][s] or '':>6}" for s in statuses))
    return "\n".join(lines)


@pytest.mark.timeout(1200)  # the stack's start (first test) plus the run's own 900 s bound
@pytest.mark.parametrize("credentials", ["with the key", "without credentials"])
def test_fuzzed_requests_get_no_server_error(stack, values, api_key, tiled, sandbox, tmp_path, credentials):
    name, _ = sandbox
    with psycopg.connect(catalog_dsn(stack, values)) as conn:
        (sandbox_id,) = conn.execute("select id from nodes where parent = 0 and key = %s", (name,)).fetchone()
    catalog_before, storage_before, replicas_before = (
        catalog_outside(stack, values, sandbox_id), storage_rows(stack, values), replicas(stack))
    mine_before, victims_before = sandbox_datasets(stack, values, sandbox_id), victims_left(stack, values, sandbox_id)
    log = tmp_path / "answers.ndjson"
    started = time.monotonic()
    done = fuzz(stack, sandbox, log, api_key if credentials == "with the key" else "")
    took = time.monotonic() - started

    by_operation, unclean, first_5xx, largest = summary(log)
    paths = httpx.get(f"{stack.local_url}/openapi.json", timeout=30).json()["paths"]
    documented = {f"{m.upper()} {p}" for p, methods in paths.items() for m in methods}
    requests = sum(sum(c.values()) for c in by_operation.values())
    print(f"\nFuzz {credentials}: {requests} requests, {len(documented & set(by_operation))} of {len(documented)} "
          f"documented operations, in {took:.0f} s (seed {SEED}, {EXAMPLES} examples, phases {PHASES})\n"
          f"{table(by_operation, documented)}")
    if unclean:
        print(f"client errors without a clean JSON detail: {dict(unclean)}")
    if out := os.environ.get("FUZZ_OUT"):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"fuzz-{credentials.replace(' ', '-')}.json").write_text(
            json.dumps({"seed": SEED, "examples": EXAMPLES, "phases": PHASES, "seconds": round(took),
                        "answers": {op: dict(c) for op, c in sorted(by_operation.items())},
                        "unclean_client_errors": dict(unclean)}, indent=1))

    server_errors = {op: {s: n for s, n in c.items() if s >= 500} for op, c in by_operation.items()
                     if any(s >= 500 for s in c)}
    assert done.returncode == 0 and not server_errors, (
        f"server errors per operation: {server_errors}\nfirst answer of each: {first_5xx}\n"
        f"--- schemathesis (each failure has a curl line) ---\n"
        f"{done.stdout[-20000:]}\n{done.stderr[-3000:]}")
    assert documented <= set(by_operation), f"never called: {sorted(documented - set(by_operation))}"
    assert not unclean, f"client errors whose body is not a short JSON detail: {dict(unclean)}"

    # Nothing outside the sandbox changed, and no replica restarted.
    assert catalog_outside(stack, values, sandbox_id) == catalog_before, "catalog rows outside the sandbox changed"
    mine = mine_before | sandbox_datasets(stack, values, sandbox_id)
    storage_after = storage_rows(stack, values)
    changed = {k for k in storage_before.keys() | storage_after.keys()
               if storage_before.get(k) != storage_after.get(k) and k not in mine}
    assert not changed, f"storage rows outside the sandbox changed: {changed}"
    assert replicas(stack) == replicas_before, "a replica restarted during the fuzz"
    deleted = victims_before - victims_left(stack, values, sandbox_id)
    print(f"victims deleted: {deleted}; client-error bodies up to {largest} bytes")
    if credentials == "with the key":
        assert deleted > 0, "no DELETE reached a victim: the DELETE operations were not exercised"
