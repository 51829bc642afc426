"""Live tier: the real stack (HAProxy, N Tiled replicas, PostgreSQL, Redis), as a user meets it."""

import hashlib
import json
import threading
import time

import httpx
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from tiled.client import from_uri

from conftest import container_addresses, make, rows_in_storage
from scripts import env_file
from scripts.lib import haproxy_stats, wait
from scripts.lib.docker_api import client, project_containers

pytestmark = pytest.mark.live


@pytest.fixture(scope="session")
def written(tiled):
    """An array and a table written through HAProxy, reused by the checks below."""
    array = np.arange(120_000, dtype="float64").reshape(300, 400) / 7
    table = pd.DataFrame({"motor": np.linspace(0, 1, 50), "det": np.arange(50, dtype="int64") ** 2})
    tiled.write_array(array, key="stack_array", metadata={"sample": "Si"})
    # An appendable table goes to the SQL storage database, as Bluesky's event streams do.
    node = tiled.create_appendable_table(pa.Schema.from_pandas(table, preserve_index=False),
                                         key="stack_table", metadata={"scan": 1})
    node.append_partition(0, pa.Table.from_pandas(table.iloc[:30], preserve_index=False))
    node.append_partition(0, pa.Table.from_pandas(table.iloc[30:], preserve_index=False))
    return array, table


def in_replica(container, url_path, api_key):
    """GET from inside a replica, straight to its own uvicorn: bypasses HAProxy."""
    code = ("import sys,urllib.request as u,hashlib;"
            "r=u.urlopen(u.Request('http://127.0.0.1:8000'+sys.argv[1],headers={'Authorization':'Apikey '+sys.argv[2]}));"
            "print(hashlib.sha256(r.read()).hexdigest())")
    result = container.exec_run(["python", "-c", code, url_path, api_key])
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode().strip()


def test_every_service_is_healthy_and_haproxy_sees_n_replicas(stack):
    assert wait.problems(stack, stack.replicas) == []
    servers = haproxy_stats.servers(stack.stats_url)
    assert [s["status"] for s in servers] == ["UP"] * stack.replicas
    assert {s["addr"] for s in servers} == set(container_addresses(stack, "tiled"))


def test_requests_through_haproxy_reach_every_replica(stack):
    seen = set()
    with httpx.Client(base_url=stack.local_url) as http:
        for _ in range(30):
            response = http.get("/api/v1/")
            assert response.status_code == 200
            seen.add(response.headers["X-Tiled-Replica"])
    assert len(seen) == stack.replicas, seen


def test_client_supplied_forwarded_headers_never_reach_tiled(stack, api_key):
    """Tiled builds its links from X-Forwarded-*: HAProxy must overwrite what a client sends."""
    spoofed = {"Authorization": f"Apikey {api_key}", "X-Forwarded-Host": "evil.example",
               "X-Forwarded-Proto": "https", "Forwarded": "host=evil.example;proto=https"}
    response = httpx.get(f"{stack.local_url}/api/v1/metadata/", headers=spoofed)
    assert response.status_code == 200
    links = json.dumps(response.json()["data"]["links"])
    assert "evil.example" not in links and "https://" not in links
    assert f"127.0.0.1:{stack.port}" in links


def test_haproxy_exports_prometheus_metrics_and_stats(stack):
    metrics = httpx.get(f"{stack.stats_url}/metrics").text
    assert 'haproxy_server_status{proxy="tiled_http"' in metrics
    assert httpx.get(f"{stack.stats_url}/stats").status_code == 200


def test_without_the_api_key_reads_and_writes_are_refused(stack):
    with httpx.Client(base_url=stack.local_url) as http:
        assert http.get("/api/v1/metadata/").status_code == 401
        assert http.get("/api/v1/search/").status_code == 401
        body = {"data": {"type": "container", "attributes": {"structure_family": "container",
                                                             "metadata": {}, "specs": []}}}
        assert http.post("/api/v1/metadata/", json=body).status_code == 401
        wrong = {"Authorization": "Apikey " + "0" * 64}
        assert http.get("/api/v1/metadata/", headers=wrong).status_code == 401


def test_with_the_key_metadata_answers_200(stack, api_key):
    response = httpx.get(f"{stack.local_url}/api/v1/metadata/", headers={"Authorization": f"Apikey {api_key}"})
    assert response.status_code == 200


def test_array_and_table_read_back_identical_through_haproxy_and_each_replica(stack, tiled, written, api_key):
    array, table = written
    fresh = from_uri(stack.local_url, api_key=api_key)
    assert fresh["stack_array"].read().tobytes() == array.tobytes()
    assert fresh["stack_array"].metadata["sample"] == "Si"
    pd.testing.assert_frame_equal(fresh["stack_table"].read(), table, check_dtype=True)
    raw = httpx.get(f"{stack.local_url}/api/v1/array/full/stack_array?format=application/octet-stream",
                    headers={"Authorization": f"Apikey {api_key}"})
    assert raw.status_code == 200 and raw.content == array.tobytes()
    expected = hashlib.sha256(array.tobytes()).hexdigest()
    table_via_proxy = httpx.get(f"{stack.local_url}/api/v1/table/full/stack_table?format=text/csv",
                                headers={"Authorization": f"Apikey {api_key}"}).content
    replicas = project_containers(stack.project, "tiled", all=False)
    assert len(replicas) == stack.replicas
    for replica in replicas:
        assert in_replica(replica, "/api/v1/array/full/stack_array?format=application/octet-stream",
                          api_key) == expected, replica.name
        assert in_replica(replica, "/api/v1/table/full/stack_table?format=text/csv",
                          api_key) == hashlib.sha256(table_via_proxy).hexdigest(), replica.name


def postgres_dsn(stack, values, role):
    (address,) = container_addresses(stack, "postgres")
    password = values[{"tiled_catalog": "CATALOG_DB_PASSWORD", "tiled_storage": "STORAGE_DB_PASSWORD",
                       "tiled_authn": "AUTHN_DB_PASSWORD"}[role]]
    return f"postgresql://{role}:{password}@{address}:5432"


def test_table_rows_live_in_tiled_storage_and_metadata_in_tiled_catalog(stack, values, tiled, written):
    array, table = written
    rows = rows_in_storage(stack, values, tiled["stack_table"], "motor, det")
    assert sorted(rows) == sorted(zip(table["motor"], table["det"])), rows
    with psycopg.connect(postgres_dsn(stack, values, "tiled_catalog") + "/tiled_catalog") as conn:
        rows = dict(conn.execute("select key, metadata from nodes where key in ('stack_array','stack_table')"))
        assert rows["stack_array"] == {"sample": "Si"} and rows["stack_table"] == {"scan": 1}
        uris = [r[0] for r in conn.execute("select data_uri from assets")]
        assert any(u.startswith("file://localhost/data/arrays/") or u.startswith("file:///data/arrays/")
                   for u in uris), uris
        assert "postgresql://postgres:5432/tiled_storage" in uris, uris
    replica = project_containers(stack.project, "tiled", all=False)[0]
    listing = replica.exec_run(["sh", "-c", "find /data/arrays -name 'zarr.json' -o -name '.zarray' | head"])
    assert listing.output.strip(), "no Zarr array on the shared volume"


def test_each_database_role_is_confined_to_its_own_database(stack, values):
    roles = ("tiled_catalog", "tiled_storage", "tiled_authn")
    for role in roles:
        psycopg.connect(postgres_dsn(stack, values, role) + f"/{role}").close()
        for other in set(roles) - {role}:
            with pytest.raises(psycopg.OperationalError, match="permission denied"):
                psycopg.connect(postgres_dsn(stack, values, role) + f"/{other}").close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_dsn(stack, values, "tiled_catalog").replace(
            values["CATALOG_DB_PASSWORD"], "wrong") + "/tiled_catalog").close()


def test_only_haproxy_publishes_a_port(stack):
    published = {}
    for c in project_containers(stack.project):
        ports = c.attrs["HostConfig"].get("PortBindings") or {}
        if ports:
            published[c.labels["com.docker.compose.service"]] = sorted(
                (b["HostIp"], b["HostPort"]) for bs in ports.values() for b in bs)
    assert published == {"haproxy": sorted([("127.0.0.1", str(stack.port)), ("127.0.0.1", str(stack.stats_port))])}


def test_no_secret_on_a_command_line_or_in_an_image(stack, values):
    secrets = [values[k] for k in env_file.secret_keys()]
    images = set()
    for c in project_containers(stack.project):
        visible = json.dumps([c.attrs["Path"], c.attrs["Args"], c.attrs["Config"].get("Cmd"),
                              c.attrs["Config"].get("Entrypoint"), c.attrs["Config"].get("Healthcheck")])
        assert not any(s in visible for s in secrets), f"secret on {c.name}'s command line"
        images.add(c.image.id)
        top = c.top(ps_args="-eo pid,args") if c.status == "running" else {"Processes": []}
        for _, args in top["Processes"]:
            assert not any(s in args for s in secrets), f"secret in a process of {c.name}: {args[:40]}…"
    for image_id in images:
        image = client().images.get(image_id)
        history = json.dumps(image.history()) + json.dumps(image.attrs["Config"])
        assert not any(s in history for s in secrets), f"secret in image {image.tags}"


def test_scale_up_and_back_without_a_failed_request(stack, api_key):
    failures, count, stop = [], [0], threading.Event()

    def load():
        with httpx.Client(base_url=stack.local_url, headers={"Authorization": f"Apikey {api_key}"},
                          timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.get("/api/v1/metadata/stack_array")
                    if r.status_code != 200:
                        failures.append(r.status_code)
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                count[0] += 1

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        make("scale", stack.env_path, N=str(stack.replicas + 1))
        assert haproxy_stats.up_count(stack.stats_url) == stack.replicas + 1
        make("scale", stack.env_path, N=str(stack.replicas))
        assert haproxy_stats.up_count(stack.stats_url) == stack.replicas
        time.sleep(3)  # traffic on the slots freed by the scale-down, after DNS settles
    finally:
        stop.set()
        for w in workers:
            w.join()
    print(f"scale {stack.replicas}→{stack.replicas + 1}→{stack.replicas}: {count[0]} requests, "
          f"{len(failures)} failed")
    assert count[0] > 50
    assert failures == []


def test_data_and_env_survive_down_and_up(stack, written, api_key):
    array, table = written
    env_before = stack.env_path.read_bytes()
    make("down", stack.env_path)
    assert project_containers(stack.project) == []
    make("up", stack.env_path)
    assert stack.env_path.read_bytes() == env_before
    fresh = from_uri(stack.local_url, api_key=api_key)
    assert fresh["stack_array"].read().tobytes() == array.tobytes()
    pd.testing.assert_frame_equal(fresh["stack_table"].read(), table)
