"""Live tier: the front door of a stack of its own, bound to every address with TLS on.

How it comes up is itself the first check: `make up` with a non-loopback bind and TLS off
is refused and starts nothing; with TILED_TLS=external (TLS ends in front) it starts; then
TILED_TLS=on and `make up` again: HTTPS with a certificate `make up` made. Every check
then goes through HAProxy over HTTPS, verified against the generated CA:
Tiled's client, a Bluesky scan and streaming over https/wss, TLS versions, headers, the
redirect, uploads over 1 GiB without good credentials, the throttle, and a certificate
swapped under an open stream.
"""

import json
import secrets
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from tiled.client import from_uri
from websockets.sync.client import connect

from conftest import ROOT, StreamCollector, container_addresses, free_port, make, subscriber_replica
from scripts import env_file
from scripts.lib import haproxy_stats, tls
from scripts.acquire import acquire
from scripts.lib.compose import Stack
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live

REPLICAS = 2
EXTRA_NAME = "haproxy"  # the name containers on the frontend network reach HAProxy by


@pytest.fixture(scope="module")
def door(request, images, tmp_path_factory):
    """(stack, make up's output): TLS on, bound to 0.0.0.0, torn down with its volumes."""
    folder = tmp_path_factory.mktemp("door")
    env_path = folder / ".env"
    project = f"tileddoor{secrets.token_hex(3)}"
    base = (f"COMPOSE_PROJECT_NAME={project}\nTILED_REPLICAS={REPLICAS}\nTILED_MAX_REPLICAS=4\n"
            f"TILED_PORT={free_port()}\nHAPROXY_STATS_PORT={free_port()}\nTILED_HTTP_PORT={free_port()}\n"
            f"TILED_BIND_ADDRESS=0.0.0.0\nTILED_TLS_NAMES={EXTRA_NAME}, tiled.test.example\n")
    stack = None
    try:
        env_path.write_text(base)
        refused = make("up", env_path, check=False)
        assert refused.returncode != 0
        assert "TILED_BIND_ADDRESS=0.0.0.0 serves the network, and TLS is off" in refused.stdout
        assert "set TILED_TLS=on" in refused.stdout
        assert project_containers(project) == [], "a refused `make up` must start nothing"

        env_path.write_text(base + "TILED_TLS=external\n")
        make("up", env_path)
        external = Stack(env_file.parse(env_path.read_text()), env_path)
        key = external.values["TILED_SINGLE_USER_API_KEY"]
        links = httpx.get(f"{external.local_url}/api/v1/metadata/", headers={"Authorization": f"Apikey {key}"},
                          timeout=30).json()["data"]["links"]
        assert external.local_url.startswith("http://")
        assert links["self"].startswith("https://"), "TLS ends in front: Tiled's links must say https"

        env_path.write_text(env_path.read_text().replace("TILED_TLS=external", "TILED_TLS=on"))
        up = make("up", env_path)
        stack = Stack(env_file.parse(env_path.read_text()), env_path)
        yield stack, up.stdout
    finally:
        stack = stack or Stack(env_file.parse(env_path.read_text()), env_path)
        if request.session.testsfailed:
            done = subprocess.run(stack.args("logs", "--no-color", "--tail=80"), cwd=ROOT, text=True,
                                  capture_output=True)
            print("\n===== front-door stack logs (a test failed) =====\n" + done.stdout[-30000:])
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


@pytest.fixture(scope="module")
def ca(door):
    return str(door[0].tls_dir / "ca.pem")


@pytest.fixture(scope="module")
def key(door):
    return door[0].values["TILED_SINGLE_USER_API_KEY"]


@pytest.fixture(scope="module")
def https(door, ca, key):
    return from_uri(door[0].local_url, api_key=key, verify=ca)


def peer_certificate(port: int, ca: str):
    """The certificate a new TLS handshake at 127.0.0.1:port gets (checked against `ca`)."""
    from cryptography import x509

    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def handshake(port: int, ca: str, version: ssl.TLSVersion) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions at all
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                return conn.version()
    except ssl.SSLError as err:
        return f"refused: {err.reason}"


def test_make_up_makes_a_ca_and_a_certificate_once_and_says_how_to_trust_it(door, ca):
    stack, output = door
    folder = stack.tls_dir
    for name in ("ca.pem", "ca.key", "server.pem", "served/tiled.pem"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    leaf = tls.checked((folder / "server.pem").read_bytes(), "server.pem")
    names = set(tls.names_of(leaf))
    assert {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", EXTRA_NAME,
            "tiled.test.example"} <= names, names
    assert f"CA to trust: {ca}" in output and f"curl --cacert {ca}" in output and f"verify='{ca}'" in output
    before = {name: (folder / name).read_bytes() for name in ("ca.pem", "ca.key", "server.pem")}
    rerun = make("up", stack.env_path)
    assert "already exists, kept" in rerun.stdout
    assert before == {name: (folder / name).read_bytes() for name in before}, "certificates are never rewritten"


def test_https_serves_tiled_with_secure_headers_and_https_links(door, ca, key, https):
    stack = door[0]
    array = np.arange(1_000, dtype="int32")
    https.write_array(array, key="over_https")
    np.testing.assert_array_equal(https["over_https"].read(), array)
    with httpx.Client(base_url=stack.local_url, verify=ca, timeout=30) as c:
        answer = c.get("/api/v1/metadata/", headers={"Authorization": f"Apikey {key}",
                                                     "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example"})
        ui = c.get("/ui/")
        refused = c.get("/api/v1/metadata/")
    assert answer.status_code == 200 and ui.status_code == 200 and "<html" in ui.text
    links = json.dumps(answer.json()["data"]["links"])
    assert "https://127.0.0.1:" in links and "http://" not in links and "evil" not in links
    for response in (answer, ui, refused):
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "server" not in response.headers, response.headers.get("server")
    redirect = httpx.get(f"http://127.0.0.1:{stack.http_port}/api/v1/metadata/x?a=1", timeout=10)
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"https://127.0.0.1:{stack.port}/api/v1/metadata/x?a=1"


def test_only_tls_1_2_and_newer_are_accepted(door, ca):
    port = door[0].port
    versions = {v.name: handshake(port, ca, v) for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1,
                                                         ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)}
    print(versions)
    # The server's alert, not this client's refusal: the old versions were offered and refused.
    assert versions["TLSv1"] == versions["TLSv1_1"] == "refused: TLSV1_ALERT_PROTOCOL_VERSION", versions
    assert versions["TLSv1_2"] == "TLSv1.2" and versions["TLSv1_3"] == "TLSv1.3"


def test_bluesky_and_streaming_work_over_https_and_wss_across_replicas(door, ca, key, https, monkeypatch):
    stack = door[0]
    scan_uid, count_uid = acquire(stack.local_url, key, points=5, frames=2, verify=ca)
    run = https[scan_uid]
    assert len(run["primary"].read()["det"]) == 5
    assert run["primary"].base.uri.startswith("https://")
    # tiled.client's subscriptions open their websocket with Python's default trust store and
    # ignore verify= (tiled 0.2.20): SSL_CERT_FILE is how a user trusts the CA for them.
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    node = https.create_appendable_table(pa.schema([("value", pa.int64())]), key="wss_table")
    node.append_partition(0, pa.table({"value": [-1]}))
    collector = StreamCollector("value")
    subscription = node.subscribe()
    subscription.new_data.add_callback(collector.on_data)
    subscription.start_in_thread()
    try:
        holder = subscriber_replica(stack)
        other = next(a for a in container_addresses(stack, "tiled") if a != holder)
        direct = from_uri(f"http://{other}:8000", api_key=key)["wss_table"]  # the writer's replica, by design
        for value in range(10):
            (direct if value % 2 else node).append_partition(0, pa.table({"value": [value]}))
        collector.wait_for(10)
    finally:
        subscription.disconnect()
    assert collector.values == list(range(10)), collector.values


def test_the_readmes_examples_and_make_demo_work_over_https(door, ca, key, monkeypatch):
    from test_readme_live import readme_example

    stack = door[0]
    namespace = {"KEY": key, "CA": ca}
    exec(readme_example("https").replace("https://localhost:8000", stack.local_url), namespace)
    assert namespace["client"].uri.startswith("https://")
    plain = 'from_uri("http://localhost:8000", api_key=KEY)'
    assert plain in readme_example("streaming")
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # as the README says, for subscriptions
    namespace = {"KEY": key, "__name__": "readme_streaming_over_https"}
    exec(readme_example("streaming").replace(plain, f'from_uri("{stack.local_url}", api_key=KEY, verify="{ca}")'),
         namespace)
    assert namespace["received"] == [[1, 2]]
    output = make("demo", stack.env_path).stdout
    assert output.count("✓ run ") == 2 and f"browse: {stack.url}/api/v1/metadata/" in output, output


def body_operations(stack, ca, key) -> list[tuple[str, str]]:
    """Every operation of the pinned Tiled that can take a body, from its own OpenAPI document."""
    spec = httpx.get(f"{stack.local_url}/openapi.json", verify=ca, headers={"Authorization": f"Apikey {key}"},
                     timeout=30).json()
    operations = []
    for path, methods in spec["paths"].items():
        for method in methods:
            if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
                operations.append((method.upper(), path.replace("{path}", "x").replace("{webhook_id}", "1")))
    return operations


class Sampler:
    """Peak memory of each replica, sampled every 50 ms while it runs, and the bytes it received."""

    def __init__(self, containers):
        self.containers = containers
        self.before = {c.name: self.usage(c) for c in containers}
        self.peak = dict(self.before)
        self.rx_before = {c.name: self.rx(c) for c in containers}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def stats(container):
        return container.stats(stream=False, one_shot=True)

    def usage(self, container):
        """What `docker stats` shows: usage less the page cache (cgroup v1) or inactive files (v2)."""
        memory = self.stats(container)["memory_stats"]
        cache = memory.get("stats", {})
        return memory["usage"] - cache.get("cache", cache.get("inactive_file", 0))

    def rx(self, container):
        return sum(n["rx_bytes"] for n in self.stats(container)["networks"].values())

    def run(self):
        while not self.done.wait(0.05):
            for c in self.containers:
                self.peak[c.name] = max(self.peak[c.name], self.usage(c))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.growth = {n: self.peak[n] - self.before[n] for n in self.before}
        self.received = {c.name: self.rx(c) - self.rx_before[c.name] for c in self.containers}


def upload(port: int, ca: str, method: str, path: str, headers: str, chunked: bool, size: int) -> tuple[str, int]:
    """Offer a body of `size` bytes; return the status line and how many bytes were sent before it.

    The head goes first, then the body 1 MiB at a time until an answer arrives. (Sent all
    at once, a refusal made from the head alone may reach this client as a reset before it
    reads it: the server closes with the body still arriving.)
    """
    context = ssl.create_default_context(cafile=ca)
    piece = b"{" + b" " * (2**20 - 1)
    if chunked:
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{headers}"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            sent = 0
            try:
                conn.sendall(head)
                conn.settimeout(1)
                while sent < size:
                    if sent > 64 * 2**20:
                        return "no answer: 64 MiB of the body were taken", sent
                    try:
                        answer = conn.recv(200)
                        return answer.split(b"\r\n")[0].decode() or "closed", sent
                    except (TimeoutError, ssl.SSLWantReadError):
                        conn.settimeout(30)
                        conn.sendall(piece)
                        sent += 2**20
                        conn.settimeout(0.05)
                conn.settimeout(30)
                return conn.recv(200).split(b"\r\n")[0].decode() or "closed", sent
            except (ssl.SSLError, OSError) as err:
                return f"closed ({type(err).__name__})", sent


def forget_failed_authentications(stack) -> None:
    """This host's failures of a test must not throttle the tests after it (they share its address)."""
    haproxy_stats.admin(stack.project, "clear table auth_failures")


def test_uploads_over_1_gib_without_good_credentials_cost_the_replicas_nothing(door, ca, key):
    stack = door[0]
    operations = body_operations(stack, ca, key)
    assert len(operations) >= 25, operations  # the pinned Tiled 0.2.20 has 27
    replicas = project_containers(stack.project, "tiled", all=False)
    started = {c.name: c.attrs["State"]["StartedAt"] for c in replicas}
    size = 1100 * 2**20
    cases = [("no credentials", ""), ("wrong key", "Authorization: Apikey wrong-key\r\n"),
             ("wrong key (query)", None)]
    answers = {}
    began = time.monotonic()
    with Sampler(replicas) as sampler:
        for method, path in operations:
            for who, header in cases:
                target = path + ("?api_key=wrong-key" if header is None else "")
                for chunked in (True, False):
                    # A declared 1.1 GiB is refused by its size alone; 900 MiB is under the
                    # body limit, so only the credentials can refuse it.
                    for declared in ((size,) if chunked else (size, 900 * 2**20)):
                        forget_failed_authentications(stack)  # else this test's own 401s turn into 429s
                        status, sent = upload(stack.port, ca, method, target, header or "", chunked, declared)
                        answers[(method, path, who, "chunked" if chunked else f"{declared >> 20} MiB")] = (status,
                                                                                                           sent)
    forget_failed_authentications(stack)
    seconds = time.monotonic() - began
    statuses = sorted({status for status, _ in answers.values()})
    taken = max(sent for _, sent in answers.values())
    growth = max(sampler.growth.values())
    received = max(sampler.received.values())
    print(f"\n  {len(answers)} uploads of over 1 GiB (declared or chunked) to {len(operations)} operations, "
          f"{seconds:.0f} s: answers {statuses}; at most {taken >> 20} MiB taken before the answer; "
          f"replica memory growth at most {growth / 2**20:.1f} MiB; replicas received at most "
          f"{received / 2**20:.2f} MiB in all")
    assert all(s.split()[1:2] and 400 <= int(s.split()[1]) < 500 for s, _ in answers.values()), \
        {k: v for k, v in answers.items() if not v[0].split()[1:2] or not 400 <= int(v[0].split()[1]) < 500}
    assert {s.split()[1] for s, _ in answers.values()} <= {"401", "411", "413"}, statuses
    assert growth < 16 * 2**20, sampler.growth
    assert received < 8 * 2**20, f"a body reached a replica: {sampler.received}"
    now = {c.name: c.attrs["State"] for c in project_containers(stack.project, "tiled", all=False)}
    assert {n: s["StartedAt"] for n, s in now.items()} == started, "a replica restarted"
    assert not any(s["OOMKilled"] for s in now.values())


def test_an_authenticated_upload_bigger_than_haproxys_buffer_round_trips(https):
    frames = np.random.default_rng(7).integers(0, 2**16, (8, 512, 512), dtype="uint16")  # 4 MiB
    node = https.write_array(frames, key="big_upload")
    assert node.read().tobytes() == frames.tobytes()


CLIENT = r"""
import json, os, sys, tempfile, httpx
ca = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)
ca.write(os.environ["CA_PEM"]); ca.close()
url = sys.argv[1]
with httpx.Client(base_url=url, verify=ca.name, timeout=30) as c:
    c.get("/api/v1/")  # connected, before the other side starts
    print("ready", flush=True)
    plan = json.loads(sys.stdin.readline())  # keys come on stdin: never on a command line
    codes = [c.get("/api/v1/metadata/", headers={"Authorization": f"Apikey {plan['key']}"}).status_code
             for _ in range(plan["count"])]
    after = {"anonymous": c.get("/api/v1/metadata/").status_code,
             "wrong key": c.get("/api/v1/metadata/", headers={"Authorization": "Apikey guess"}).status_code,
             "new guess, with a body": c.post("/api/v1/metadata/", headers={"Authorization": "Apikey guess2"},
                                              json={}).status_code,
             "good key": c.get("/api/v1/metadata/", headers={"Authorization": f"Apikey {plan['good_key']}"}).status_code}
print(json.dumps({"codes": codes, "after": after}))
"""


def frontend_client(stack, ca):
    """A client in a container of its own on the stack's frontend network: an address of its own."""
    return subprocess.Popen(
        ["docker", "run", "--rm", "-i", "--network", f"{stack.project}_frontend", "-e", f"CA_PEM={Path(ca).read_text()}",
         "tiled-stack/tiled:0.2.20", "python", "-c", CLIENT, f"https://{EXTRA_NAME}:8000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_failed_authentications_throttle_that_address_only(door, ca, key, https):
    stack = door[0]
    https.write_array(np.zeros(4), key="throttle_probe")  # the key has been checked good by a replica
    limit = int(stack.values.get("HAPROXY_AUTH_FAIL_LIMIT", "10"))
    guesser, beamline = frontend_client(stack, ca), frontend_client(stack, ca)
    for side in (guesser, beamline):
        assert side.stdout.readline().strip() == "ready", side.stderr.read()
    for side, plan in ((guesser, {"key": "guess", "count": limit + 10}), (beamline, {"key": key, "count": 300})):
        side.stdin.write(json.dumps({**plan, "good_key": key}) + "\n")
        side.stdin.flush()
    results = []
    for side in (guesser, beamline):
        out, err = side.communicate(timeout=300)
        assert side.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    guessed, good = results
    print(f"\n  key guessing from one address: {guessed['codes'].count(401)} × 401 then "
          f"{guessed['codes'].count(429)} × 429 (limit {limit}); then from it {guessed['after']}; "
          f"another address meanwhile: {len(good['codes'])} requests with a good key, {sorted(set(good['codes']))}")
    assert guessed["codes"] == [401] * limit + [429] * 10
    # A throttled address gets no guess checked (a body's included), but a key that was good passes.
    assert guessed["after"] == {"anonymous": 429, "wrong key": 429, "new guess, with a body": 429,
                                "good key": 200}, guessed["after"]
    assert set(good["codes"]) == {200}
    assert good["after"] == {"anonymous": 401, "wrong key": 401, "new guess, with a body": 401, "good key": 200}


def raw_request(port: int, ca: str, head: str, body: bytes = b"", wait: float = 30) -> str:
    """Send a request by hand over TLS; return the status line (or how the connection ended)."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(head.encode() + b"\r\n" + body)
            try:
                return conn.recv(300).split(b"\r\n")[0].decode() or "closed"
            except (ssl.SSLError, OSError) as err:
                return f"closed ({type(err).__name__})"


def test_hostile_clients_are_answered_at_the_door(door, ca, key):
    """HTTP/2, websockets, encoded paths, a trickled body, duplicated credentials: refused before a replica."""
    stack = door[0]
    host = f"Host: localhost:{stack.port}\r\n"
    ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    cases = {
        "HTTP/2 preface": ("PRI * HTTP/2.0\r\n\r\nSM\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
        "websocket, no key": (f"GET /api/v1/stream/single/x HTTP/1.1\r\n{host}{ws}", b""),
        "websocket, wrong key": (f"GET /api/v1/stream/single/x HTTP/1.1\r\n{host}{ws}Authorization: Apikey nope\r\n", b""),
        "websocket, encoded path": (f"GET /api/v1/%73tream/single/x HTTP/1.1\r\n{host}{ws}", b""),
        "credentials check, encoded path": (f"GET /%5Ffront_door/credentials HTTP/1.1\r\n{host}"
                                            f"Authorization: Apikey {key}\r\n", b""),
        "two Authorization headers": (f"POST /api/v1/metadata/ HTTP/1.1\r\n{host}Authorization: Apikey {key}\r\n"
                                      "Authorization: Apikey other\r\nContent-Length: 2\r\n", b"{}"),
        "two api_key parameters": (f"POST /api/v1/metadata/?api_key={key}&api_key=other HTTP/1.1\r\n{host}"
                                   "Content-Length: 2\r\n", b"{}"),
        "two api_key parameters, one encoded": (f"POST /api/v1/metadata/?api_key={key}&api%5Fkey=other HTTP/1.1\r\n"
                                                f"{host}Content-Length: 2\r\n", b"{}"),
        "good key, and a guess under an encoded name": (
            f"POST /api/v1/metadata/?api%5Fkey=guess HTTP/1.1\r\n{host}Authorization: Apikey {key}\r\n"
            "Content-Length: 2\r\n", b"{}"),
        "CR LF in ?api_key=": (f"POST /api/v1/metadata/?api_key=x%0d%0aX-Injected:%201 HTTP/1.1\r\n{host}"
                               "Content-Length: 2\r\n", b"{}"),
        "websocket, key only in ?api_key=": (f"GET /api/v1/stream/single/x?api_key={key} HTTP/1.1\r\n{host}{ws}", b""),
        "anonymous body trickled": (f"POST /api/v1/metadata/ HTTP/1.1\r\n{host}Content-Length: 8000\r\n", b"{"),
        "anonymous body trickled behind 14 KB of headers": (
            f"POST /api/v1/metadata/ HTTP/1.1\r\n{host}X-Padding: {'a' * 14000}\r\nContent-Length: 8000\r\n",
            b"{" + b" " * 2999),
    }
    replicas = project_containers(stack.project, "tiled", all=False)
    answers = {}
    with Sampler(replicas) as sampler:
        for name, (head, body) in cases.items():
            forget_failed_authentications(stack)
            answers[name] = raw_request(stack.port, ca, head, body)
    forget_failed_authentications(stack)
    print("\n" + "\n".join(f"  {name:34} {answer}" for name, answer in answers.items())
          + f"\n  replicas received at most {max(sampler.received.values())} bytes")
    assert answers["HTTP/2 preface"].startswith("HTTP/1.1 400"), "HTTP/2 must not be spoken here"
    for name in ("websocket, no key", "websocket, wrong key", "websocket, encoded path",
                 "websocket, key only in ?api_key="):
        assert answers[name].startswith("HTTP/1.1 401"), (name, answers[name])
    assert answers["credentials check, encoded path"].startswith("HTTP/1.1 404")
    assert answers["two Authorization headers"].startswith("HTTP/1.1 400")
    assert answers["two api_key parameters"].startswith("HTTP/1.1 400")
    assert answers["two api_key parameters, one encoded"].startswith("HTTP/1.1 400")
    assert answers["good key, and a guess under an encoded name"].startswith("HTTP/1.1 400")
    assert answers["CR LF in ?api_key="].startswith("HTTP/1.1 401")
    assert answers["anonymous body trickled behind 14 KB of headers"].startswith("HTTP/1.1 413")
    assert answers["anonymous body trickled"].startswith("HTTP/1.1 408")
    # Health checks and the credentials checks of the cases above are all that reached them.
    assert max(sampler.received.values()) < 256 * 1024, sampler.received


def next_update(ws) -> dict:
    """The next table-data message of a raw websocket subscription (the schema comes first)."""
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == "table-data":
            return message


class KeptConnection:
    """One TLS connection, kept: requests on it fail if it is closed (no silent reconnect)."""

    def __init__(self, port, ca):
        from cryptography import x509

        context = ssl.create_default_context(cafile=ca)
        self.conn = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                                        server_hostname="localhost")
        self.serial = x509.load_der_x509_certificate(self.conn.getpeercert(binary_form=True)).serial_number
        self.port = port

    def get(self, path) -> int:
        self.conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{self.port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.conn.recv(65536)
            assert chunk, "the server closed the connection"
            head += chunk
        headers, _, rest = head.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in headers.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += self.conn.recv(65536)
        return int(headers.split()[1])

    def close(self):
        self.conn.close()


def test_a_renewed_certificate_is_served_without_dropping_a_stream(door, ca, key, https):
    stack = door[0]
    old = peer_certificate(stack.port, ca)
    node = https.create_appendable_table(pa.schema([("value", pa.int64())]), key="swap_table")
    node.append_partition(0, pa.table({"value": [-1]}))
    context = ssl.create_default_context(cafile=ca)
    ws_url = f"wss://localhost:{stack.port}/api/v1/stream/single/swap_table?envelope_format=json"
    kept = KeptConnection(stack.port, ca)  # one keep-alive TLS connection across the swap
    assert kept.get("/api/v1/") == 200
    renewed = stack.tls_dir.parent / "renewed.pem"
    tls.write_private(renewed, tls.issue_server(stack.tls_dir / "ca.key", stack.tls_dir / "ca.pem",
                                                ["localhost", "127.0.0.1"], days=90))
    with connect(ws_url, ssl=context, additional_headers={"Authorization": f"Apikey {key}"}) as ws:
        node.append_partition(0, pa.table({"value": [1]}))
        before = [next_update(ws)]
        env = stack.env_path.read_text()
        stack.env_path.write_text(env + f"TILED_TLS_CERT={renewed}\n")
        try:
            make("reload-tls", stack.env_path)
        finally:
            stack.env_path.write_text(env)
        # At once: HAProxy closes a keep-alive connection idle for 10 s.
        assert kept.get("/api/v1/") == 200, "an open keep-alive connection was dropped"
        for value in (2, 3):
            node.append_partition(0, pa.table({"value": [value]}))
        after = [next_update(ws) for _ in range(2)]
    new = peer_certificate(stack.port, ca)
    assert kept.serial == old.serial_number, "the kept connection is still the one made before the swap"
    kept.close()
    assert [m["payload"]["value"] for m in before + after] == [[1], [2], [3]]
    sequences = [m["sequence"] for m in before + after]
    print(f"\n  certificate {old.serial_number:x} → {new.serial_number:x}; one websocket, sequences {sequences}")
    assert new.serial_number != old.serial_number
    assert new.serial_number == tls.checked(renewed.read_bytes(), "renewed").serial_number
    assert sequences == list(range(sequences[0], sequences[0] + 3)), "the open stream lost or repeated an update"
    assert all(c.attrs["State"]["Restarting"] is False for c in project_containers(stack.project, "haproxy"))


def test_no_api_key_reaches_haproxys_log(door, ca, key):
    """Keys in a query string (?api_key=) stay out of the log, the credentials check's included."""
    stack = door[0]
    with httpx.Client(base_url=stack.local_url, verify=ca, timeout=30) as c:
        assert c.get(f"/api/v1/metadata/?api_key={key}").status_code == 200
        # Checked good by a replica, then answered by Tiled (its CSRF rule for keys in a URL: 403).
        assert c.post(f"/api/v1/metadata/?api_key={key}", json={}).status_code not in (401, 503)
    time.sleep(1)
    (haproxy,) = project_containers(stack.project, "haproxy", all=False)
    log = haproxy.logs().decode()
    assert "/api/v1/metadata/" in log and "/_front_door/credentials" in log
    assert key not in log and "wrong-key" not in log, "an API key was written to HAProxy's log"
