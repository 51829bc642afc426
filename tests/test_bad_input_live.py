"""Live tier: bad input through HAProxy gets a clear 4xx, changes nothing, and every
replica stays up.

Covered: missing and wrong API key, malformed JSON, a wrong content type, a
truncated upload (the client leaves, or stalls), an oversized body, path traversal
in node names and in detector-file registration, and a websocket with a bad key,
all while good clients keep reading and writing.
"""

import re
import socket
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import websockets.exceptions
from websockets.sync.client import connect

from load_clients import NodeWriter, Readers, reading_paths, keys_in_catalog
from scripts.lib import haproxy_stats
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live


def raw_http(url: str, head: str, body: bytes, shut: bool) -> bytes:
    """Send a request by hand: a declared body that may be shorter than it says."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=20) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        if shut:
            s.shutdown(socket.SHUT_WR)  # the client goes away mid-upload
        try:
            return s.recv(4096)
        except (socket.timeout, ConnectionResetError):
            return b""


def test_bad_input_gets_4xx_and_changes_nothing(stack, tiled, api_key, values):
    started = int(time.time()) - 1  # HAProxy's log is read from here (a slow run may take minutes)
    node = tiled.write_array(np.arange(64, dtype="int32").reshape(8, 8), key=f"bad_{time.monotonic_ns()}")
    key_path = node.item["id"]
    detectors = values["TILED_READABLE_STORAGE"]
    replicas = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, "tiled", all=False)}
    good = {"Authorization": f"Apikey {api_key}"}
    container = {"structure_family": "container", "specs": [], "data_sources": [], "metadata": {}}

    def registration(uri):
        return {"id": f"reg_{time.monotonic_ns()}", "structure_family": "array", "specs": [], "metadata": {},
                "data_sources": [{"structure_family": "array", "mimetype": "image/tiff", "parameters": {},
                                  "management": "external",
                                  "structure": {"data_type": {"endianness": "little", "kind": "u", "itemsize": 2,
                                                              "dt_units": None},
                                                "chunks": [[4], [4]], "shape": [4, 4], "dims": None,
                                                "resizable": False},
                                  "assets": [{"data_uri": uri, "is_directory": False, "parameter": "data_uris",
                                              "num": 0}]}]}

    parent = f"bad_load_{time.monotonic_ns()}"
    tiled.create_container(parent)
    paths = reading_paths(tiled, parent)
    before = sorted(tiled)
    # Good clients keep reading and writing while the bad input arrives.
    with Readers(stack.local_url, api_key, paths) as load, \
            NodeWriter(stack.local_url, api_key, parent) as writer:
        answers = {}
        with httpx.Client(base_url=stack.local_url, timeout=30) as c:
            answers["no key"] = c.get("/api/v1/metadata/")
            answers["wrong key (read)"] = c.get("/api/v1/metadata/", headers={"Authorization": "Apikey nope"})
            answers["wrong key (write)"] = c.post("/api/v1/metadata/", headers={"Authorization": "Apikey nope"},
                                                  json={**container, "id": "never"})
            answers["malformed JSON"] = c.post("/api/v1/metadata/",
                                               headers={**good, "Content-Type": "application/json"},
                                               content=b'{"structure_family": "container", ')
            answers["wrong content type"] = c.post("/api/v1/metadata/", headers={**good, "Content-Type": "text/plain"},
                                                   content=b"structure_family=container")
            answers["node name ../x"] = c.post("/api/v1/metadata/", headers=good, json={**container, "id": "../x"})
            answers["node name a/../../b"] = c.post("/api/v1/metadata/", headers=good,
                                                    json={**container, "id": "a/../../b"})
            answers["path ../.. in URL"] = c.get("/api/v1/metadata/%2e%2e/%2e%2e/etc/passwd", headers=good)
            answers["register /etc/passwd"] = c.post("/api/v1/register/", headers=good,
                                                     json=registration("file://localhost/etc/passwd"))
            answers["register detectors/../../etc"] = c.post(
                "/api/v1/register/", headers=good, json=registration(f"file://localhost{detectors}/../../etc/passwd"))
            answers["external assets via POST /metadata"] = c.post(
                "/api/v1/metadata/", headers=good, json=registration(f"file://localhost{detectors}/x.tiff"))
        host = urlparse(stack.local_url).netloc
        oversized = raw_http(stack.local_url, f"PUT /api/v1/array/full/{key_path} HTTP/1.1\r\nHost: {host}\r\n"
                             f"Authorization: Apikey {api_key}\r\nContent-Type: application/octet-stream\r\n"
                             f"Content-Length: {5 * 2**30}\r\n", b"", shut=False)
        upload = (f"PUT /api/v1/array/full/{key_path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Apikey {api_key}"
                  f"\r\nContent-Type: application/octet-stream\r\nContent-Length: 256\r\n")
        truncated = raw_http(stack.local_url, upload, b"\1" * 100, shut=True)  # the client leaves mid-body
        stalled = raw_http(stack.local_url, upload, b"\1" * 100, shut=False)  # … or stops sending
        ws_url = stack.local_url.replace("http://", "ws://") + f"/api/v1/stream/single/{key_path}?envelope_format=json"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            with connect(ws_url, additional_headers={"Authorization": "Apikey nope"}, open_timeout=10):
                pass
        ws_status = refused.value.response.status_code

    statuses = {name: r.status_code for name, r in answers.items()}
    statuses["oversized body (5 GiB declared)"] = int(oversized.split()[1]) if oversized else None
    statuses["websocket, wrong key"] = ws_status
    statuses["upload cut off, client stalls"] = int(stalled.split()[1]) if stalled else None
    reads, writes = [o for *_, o in load.results], list(writer.outcomes.values())
    print("\n" + "\n".join(f"  {name:36} {status}" for name, status in statuses.items())
          + f"\n  {'upload cut off, client leaves':36} {truncated.decode() or 'dropped (no one to answer)'}"
          + f"\n  meanwhile {len(reads)} reads {sorted(set(map(str, reads)))}, {len(writes)} creates "
          f"{sorted(set(map(str, writes)))}")
    assert all(isinstance(s, int) and 400 <= s < 500 for s in statuses.values()), statuses
    assert statuses["oversized body (5 GiB declared)"] == 413
    assert statuses["register /etc/passwd"] == statuses["register detectors/../../etc"] == 400
    assert "outside this server's readable storage" in answers["register /etc/passwd"].json()["detail"]
    assert statuses["upload cut off, client stalls"] == 408
    assert truncated == b"", "a client that left mid-upload is answered by nobody"
    assert reads and set(reads) == {200} and set(writes) == {200}, "good clients were disturbed"
    assert sorted(keys_in_catalog(tiled, parent)) == sorted(writer.outcomes)

    time.sleep(2)
    assert sorted(tiled) == before, "bad input must not create or remove anything"
    np.testing.assert_array_equal(tiled[key_path].read(), np.arange(64, dtype="int32").reshape(8, 8))
    now = {c.name: c.attrs["State"]["StartedAt"] for c in project_containers(stack.project, "tiled", all=False)}
    assert now == replicas and haproxy_stats.up_count(stack.stats_url) == len(replicas), "a replica went down"
    (haproxy,) = project_containers(stack.project, "haproxy", all=False)
    log = haproxy.logs(since=started).decode(errors="replace")
    for status in {s for s in statuses.values()}:
        # The status field: after the five timers (%TR/%Tw/%Tc/%Tr/%Ta), before the bytes.
        assert re.search(rf" -?\d+/-?\d+/-?\d+/-?\d+/-?\d+ {status} \d+ ", log), (
            f"no HAProxy log line for the {status} answers")
    # The upload the client abandoned is logged as a client abort (CR) that never reached a replica.
    assert any("tiled_http/<NOSRV>" in line and " CR-- " in line and f"PUT /api/v1/array/full/{key_path}" in line
               for line in log.splitlines()), "no HAProxy log line for the abandoned upload"
