"""Live tier: real users on a stack of their own, through HAProxy over HTTPS.

A test facility (COMPOSE_PROFILES=idp): the directory of ldap/ (alice in beamline-a,
bob in beamline-b, carol in staff, dave in visitors, erin in staff and an admin) and the
OIDC provider of oidc/. The stack starts with TILED_AUTH=ldap; the OIDC tests switch
it to TILED_AUTH=oidc with `make up` at the end of the module.
"""

import secrets
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from tiled.client import from_uri

from bluesky.plans import scan

from conftest import container_addresses, free_port, make
from load_clients import Readers, Scans, incomplete_runs
from scripts.acquire import devices, writing_engine
from scripts.lib import haproxy_stats, wait
from scripts.lib.compose import Stack
from scripts.lib.docker_api import project_containers

pytestmark = pytest.mark.live

PEOPLE = "ou=people,dc=facility,dc=test"
GROUPS = "ou=groups,dc=facility,dc=test"
LDAP_ENV = {
    "TILED_AUTH": "ldap",
    "TILED_LDAP_URI": "ldap://ldap:389",
    "TILED_LDAP_STARTTLS": "off",
    "TILED_LDAP_BIND_DN_TEMPLATE": f"uid={{username}},{PEOPLE}",
    "TILED_LDAP_ALLOWED_GROUPS": ";".join(f"cn={g},{GROUPS}" for g in ("beamline-a", "beamline-b", "staff")),
    "TILED_LDAP_GROUP_BASE": GROUPS,
    "TILED_ADMINS": "erin",
}
SERVICE = "beamline-a-acquisition"  # named in tiled/access/tags.yml: writes beamline-a's runs


@pytest.fixture(scope="module")
def facility(request, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("facility")
    env_path = folder / ".env"
    env_path.write_text(
        f"COMPOSE_PROJECT_NAME=tiledauth{secrets.token_hex(3)}\nTILED_REPLICAS=3\nTILED_MAX_REPLICAS=5\n"
        f"TILED_PORT={free_port()}\nHAPROXY_STATS_PORT={free_port()}\nOIDC_PORT={free_port()}\n"
        "TILED_TLS=on\nHAPROXY_AUTH_FAIL_LIMIT=1000\nCOMPOSE_PROFILES=idp\n"
        + "".join(f"{k}={v}\n" for k, v in LDAP_ENV.items()))
    try:
        make("up", env_path)
        yield Stack(env_path=env_path)
    finally:
        stack = Stack(env_path=env_path)
        if request.session.testsfailed:
            logs = stack.run("logs", "--no-color", "--tail=80", check=False, capture=True)
            print("\n===== logs of the auth stack (a test failed) =====\n" + (logs.stdout or "")[-40000:])
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack.verify if isinstance(stack.verify, str) else None)


def client(stack: Stack, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=stack.local_url, verify=tls(stack), timeout=30, **kwargs)


def login(stack: Stack, user: str, password: str | None = None) -> httpx.Response:
    with client(stack) as c:
        return c.post("/api/v1/auth/provider/ldap/token",
                      data={"username": user, "password": password or f"{user}-password"})


def tokens(stack: Stack, user: str) -> dict:
    answer = login(stack, user)
    assert answer.status_code == 200, answer.text
    return {**answer.json(), "replica": answer.headers["x-tiled-replica"]}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def apikey(key: str) -> dict:
    return {"Authorization": f"Apikey {key}"}


def new_key(stack: Stack, **values) -> str:
    """`make key` / `make service-account`, as an operator runs them: the key it prints."""
    lines = make("service-account" if "NAME" in values else "key", stack.env_path, **values).stdout.splitlines()
    return lines[next(i for i, line in enumerate(lines) if "shown only this once" in line) + 1].strip()


def answers_on_every_replica(stack: Stack, headers: dict, path: str = "/api/v1/metadata/", want: int = 3):
    """Status per replica (X-Tiled-Replica), asking through HAProxy until each has answered."""
    seen = {}
    with client(stack, headers=headers) as c:
        for _ in range(60):
            answer = c.get(path)
            seen.setdefault(answer.headers.get("x-tiled-replica"), answer.status_code)
            if len(seen) >= want:
                return seen
    raise AssertionError(f"only {sorted(seen)} answered")


@pytest.fixture(scope="module")
def service_key(facility):
    return new_key(facility, NAME=SERVICE)


@pytest.fixture(scope="module")
def runs(facility, service_key):
    """A beamline-a scan by the beamline's service account, tagged beamline-a, and a run of
    beamline-b's (written by the admin, tagged beamline-b)."""
    documents = []
    writer = from_uri(facility.local_url, api_key=service_key, verify=facility.verify)
    engine = writing_engine(writer, main_thread=True)
    engine.md["tiled_access_tags"] = ["beamline-a"]
    engine.subscribe(lambda name, doc: documents.append((name, doc)))
    motor, det, _ = devices()
    (uid_a,) = engine(scan([det], motor, -1, 1, 7))
    erin = new_key(facility, FOR="erin", EXPIRES="1h",  # an admin (TILED_ADMINS): any tag, with admin:apikeys
                   SCOPES="read:metadata read:data write:metadata write:data create:node admin:apikeys")
    admin = from_uri(facility.local_url, api_key=erin, verify=facility.verify)
    run_b = f"beamline-b-{secrets.token_hex(4)}"
    admin.create_container(run_b, metadata={"beamline": "b"}, access_tags=["beamline-b"]) \
        .write_array(np.arange(10), key="img", access_tags=["beamline-b"])
    return uid_a, run_b, documents


# ── LDAP ─────────────────────────────────────────────────────────────────────────────

def test_a_directory_user_logs_in_over_https_and_reads(facility):
    assert facility.local_url.startswith("https://")
    alice = tokens(facility, "alice")
    with client(facility, headers=bearer(alice["access_token"])) as c:
        assert c.get("/api/v1/metadata/").status_code == 200
        whoami = c.get("/api/v1/auth/whoami").json()
    assert [(i["provider"], i["id"]) for i in whoami["identities"]] == [("ldap", "alice")]
    # TILED_ADMINS=erin: she lists the principals, alice may not (her role lacks the scope).
    with client(facility) as c:
        assert c.get("/api/v1/auth/principal", headers=bearer(tokens(facility, "erin")["access_token"])).status_code == 200
        assert c.get("/api/v1/auth/principal", headers=bearer(alice["access_token"])).status_code == 403


def test_tiled_client_logs_in_at_its_prompts(facility, monkeypatch):
    """What a user at a terminal does: from_uri() asks for a name and a password."""
    import tiled.client.context as context

    monkeypatch.setattr(context, "username_input", lambda: "alice")
    monkeypatch.setattr(context, "password_input", lambda: "alice-password")
    alice = from_uri(facility.local_url, verify=tls(facility), remember_me=False)
    assert alice.context.whoami()["identities"][0]["id"] == "alice"
    assert list(alice) is not None  # and reads


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(facility):
    wrong, unknown = login(facility, "alice", "not-her-password"), login(facility, "mallory", "whatever")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_a_user_outside_the_allowed_groups_is_refused(facility):
    dave = login(facility, "dave")
    assert dave.status_code == 401 and dave.json() == login(facility, "mallory", "x").json()


def test_a_token_issued_through_one_replica_works_on_the_others(facility):
    alice = tokens(facility, "alice")
    seen = answers_on_every_replica(facility, bearer(alice["access_token"]))
    assert alice["replica"] in seen and set(seen.values()) == {200}, seen


def test_a_refresh_works_after_the_issuing_replica_was_sigkilled(facility):
    alice = tokens(facility, "alice")
    # HAProxy names its server slots tiled-1…: the issuing one's address is its container's.
    address = next(s["addr"].split(":")[0] for s in haproxy_stats.servers(facility.stats_url, "tiled_http")
                   if s["name"] == alice["replica"])
    victim = container_addresses(facility, "tiled")[address]
    victim.kill()
    try:
        with client(facility) as c:
            refreshed = c.post("/api/v1/auth/session/refresh", json={"refresh_token": alice["refresh_token"]})
            assert refreshed.status_code == 200, refreshed.text
            assert refreshed.headers["x-tiled-replica"] != alice["replica"]
            assert c.get("/api/v1/metadata/", headers=bearer(refreshed.json()["access_token"])).status_code == 200
    finally:
        victim.start()
        wait.until_healthy(facility, 3)


# ── Keys ─────────────────────────────────────────────────────────────────────────────

# Reads whose request body lists the fields or buffers wanted.
READS_WITH_A_BODY = ("/api/v1/table/partition/", "/api/v1/table/full/", "/api/v1/awkward/buffers/",
                     "/api/v1/container/full/")


def write_operations(stack: Stack, node: str) -> list[tuple[str, str]]:
    """Every write route of the OpenAPI document, on `node` (a run alice can read)."""
    with client(stack) as c:
        spec = c.get("/openapi.json").json()
    operations = []
    for path, methods in spec["paths"].items():
        for method in methods:
            if method in ("post", "put", "patch", "delete") and path.startswith("/api/v1/") \
                    and not path.startswith(("/api/v1/auth", *READS_WITH_A_BODY)):
                operations.append((method.upper(), path.replace("{path}", node).replace("{uuid}", "0" * 32)))
    return operations


def test_a_read_only_key_gets_403_on_every_write_endpoint(facility, runs, service_key):
    """A read-only key of the service account, on the run it wrote: its tags would let it
    write, so each 403 is the key's scopes speaking (patch 0025; Tiled as released says 401)."""
    uid_a, _, _ = runs
    key = new_key(facility, FOR=SERVICE, SERVICE="1", SCOPES="read:metadata read:data", EXPIRES="1h")
    with client(facility, headers=apikey(key)) as c:
        assert c.get(f"/api/v1/metadata/{uid_a}").status_code == 200
        statuses = {f"{m} {p}": c.request(m, p, json={}).status_code for m, p in write_operations(facility, uid_a)}
    print(f"\n{len(statuses)} write operations with a read-only key: {sorted(set(statuses.values()))}")
    assert len(statuses) >= 10
    assert {s for s in statuses.values()} == {403}, {k: v for k, v in statuses.items() if v != 403}


def test_an_expired_and_a_revoked_key_get_401_on_every_replica_within_seconds(facility):
    revoked = new_key(facility, FOR="alice", SCOPES="read:metadata")
    expiring = new_key(facility, FOR="alice", SCOPES="read:metadata", EXPIRES="12")
    expires_at = time.monotonic() + 12
    assert set(answers_on_every_replica(facility, apikey(expiring)).values()) == {200}
    assert set(answers_on_every_replica(facility, apikey(revoked)).values()) == {200}
    make("revoke-key", facility.env_path, KEY=revoked[:8])
    revoked_at = time.monotonic()
    assert set(answers_on_every_replica(facility, apikey(revoked)).values()) == {401}
    print(f"\nrevoked key refused by every replica {time.monotonic() - revoked_at:.2f}s after `make revoke-key`")
    time.sleep(max(0.0, expires_at - time.monotonic()) + 0.5)
    assert set(answers_on_every_replica(facility, apikey(expiring)).values()) == {401}
    assert revoked[:8] not in make("keys", facility.env_path, FOR="alice").stdout


def test_the_service_account_runs_a_bluesky_scan_read_back_equal(facility, service_key, runs):
    uid_a, _, documents = runs
    run = from_uri(facility.local_url, api_key=service_key, verify=facility.verify)[uid_a]
    events = [d for n, d in documents if n == "event"]
    data = run["primary"].read()
    for column in ("det", "motor"):
        np.testing.assert_array_equal(data[column].values, [e["data"][column] for e in events])


# ── Access ───────────────────────────────────────────────────────────────────────────

def sees(stack: Stack, token: str, uid: str, data_path: str) -> dict[str, int | bool]:
    """What one user gets for one run: search, metadata, data and a websocket subscription."""
    import websockets.sync.client as ws

    with client(stack, headers=bearer(token)) as c:
        found = uid in [item["id"] for item in c.get("/api/v1/search/", params={"page[limit]": 300}).json()["data"]]
        metadata = c.get(f"/api/v1/metadata/{uid}").status_code
        data = c.get(data_path).status_code
    url = stack.local_url.replace("https://", "wss://").replace("http://", "ws://")
    try:
        with ws.connect(f"{url}/api/v1/stream/single/{uid}?envelope_format=json&access_token={token}",
                        ssl=tls(stack), open_timeout=10):
            stream = 101
    except Exception as err:  # the handshake refused: its HTTP status
        stream = getattr(getattr(err, "response", None), "status_code", repr(err))
    return {"search": found, "metadata": metadata, "data": data, "stream": stream}


def test_a_group_member_reads_only_the_groups_runs_and_staff_read_all(facility, runs):
    uid_a, run_b, _ = runs
    alice, bob, carol = (tokens(facility, u)["access_token"] for u in ("alice", "bob", "carol"))
    data = {uid_a: f"/api/v1/table/full/{uid_a}/primary/internal", run_b: f"/api/v1/array/full/{run_b}/img"}
    seen = {(user, run): sees(facility, token, run, data[run])
            for user, token in (("alice", alice), ("bob", bob), ("carol", carol)) for run in (uid_a, run_b)}
    print("\n" + "\n".join(f"{user} → {run[:8]}: {answer}" for (user, run), answer in seen.items()))
    allowed = {"search": True, "metadata": 200, "data": 200, "stream": 101}
    for user, run in (("alice", uid_a), ("bob", run_b), ("carol", uid_a), ("carol", run_b)):
        assert seen[user, run] == allowed, (user, run)
    for user, run in (("alice", run_b), ("bob", uid_a)):
        answer = seen[user, run]
        assert answer["search"] is False and answer["metadata"] == answer["data"] == 404, (user, run, answer)
        assert answer["stream"] in (403, 404), (user, run, answer)


# ── Load, restarts, rotation ─────────────────────────────────────────────────────────

def test_a_user_reading_and_the_service_account_writing_see_no_failure_when_a_replica_is_sigkilled(
        facility, runs, service_key):
    uid_a, _, _ = runs
    key = new_key(facility, FOR="alice", SCOPES="read:metadata read:data", EXPIRES="1h")
    paths = [f"/api/v1/metadata/{uid_a}", f"/api/v1/table/full/{uid_a}/primary/internal", "/api/v1/search/"]
    victim = project_containers(facility.project, "tiled", all=False)[0]
    try:
        with Readers(facility.local_url, key, paths, verify=tls(facility)) as load, \
                Scans(facility.local_url, service_key, verify=tls(facility),
                      md={"tiled_access_tags": ["beamline-a"]}) as scans:
            time.sleep(4)
            victim.kill()
            time.sleep(8)
    finally:
        victim.start()
    reads = [o for *_, o in load.results]
    service = from_uri(facility.local_url, api_key=service_key, verify=tls(facility))
    incomplete = incomplete_runs(service, scans.written())
    print(f"\nSIGKILL of {victim.name}: alice {len(reads)} reads {sorted(set(map(str, reads)))}; service account "
          f"{len(scans.results)} scans, {len(scans.written())} written, incomplete {incomplete}, errors {scans.errors()}")
    assert reads and set(reads) == {200}
    assert scans.written() and not incomplete and not scans.errors()
    wait.until_healthy(facility, 3)


def sessions_and_keys_work(stack: Stack, key: str, refresh_token: str) -> str:
    """The key reads, and the session refreshes (returning its next refresh token)."""
    with client(stack) as c:
        assert c.get("/api/v1/metadata/", headers=apikey(key)).status_code == 200
        refreshed = c.post("/api/v1/auth/session/refresh", json={"refresh_token": refresh_token})
        assert refreshed.status_code == 200, refreshed.text
        assert c.get("/api/v1/auth/whoami", headers=bearer(refreshed.json()["access_token"])).status_code == 200
    return refreshed.json()["refresh_token"]


def test_principals_keys_and_sessions_survive_down_and_up_and_a_backup_restored_into_a_clean_stack(
        facility, runs, tmp_path):
    uid_a, _, _ = runs
    key = new_key(facility, FOR="bob", SCOPES="read:metadata", EXPIRES="1d")
    refresh_token = tokens(facility, "bob")["refresh_token"]
    make("down", facility.env_path)
    make("up", facility.env_path)
    refresh_token = sessions_and_keys_work(facility, key, refresh_token)
    backup = tmp_path / "backup"
    make("backup", facility.env_path, BACKUP_DIR=str(backup))
    assert (backup / "authn.dump").stat().st_size > 0
    make("clean", facility.env_path, FORCE="1")
    make("up", facility.env_path)
    with client(facility) as c:
        assert c.get("/api/v1/metadata/", headers=apikey(key)).status_code == 401  # a new, empty stack
    make("restore", facility.env_path, BACKUP=str(backup))
    sessions_and_keys_work(facility, key, refresh_token)
    carol = tokens(facility, "carol")["access_token"]
    with client(facility, headers=bearer(carol)) as c:
        assert c.get(f"/api/v1/metadata/{uid_a}").status_code == 200  # the tags came back with the catalog


def test_rotating_the_secret_key_logs_nobody_out_and_retiring_it_refuses_its_tokens(facility):
    before = tokens(facility, "alice")
    rotated = make("rotate-secret-key", facility.env_path).stdout
    assert "secret key rotated" in rotated
    with client(facility) as c:
        # A token signed with the old key still works on every replica, and its session refreshes.
        assert set(answers_on_every_replica(facility, bearer(before["access_token"])).values()) == {200}
        refreshed = c.post("/api/v1/auth/session/refresh", json={"refresh_token": before["refresh_token"]})
        assert refreshed.status_code == 200
    make("retire-secret-key", facility.env_path)
    assert set(answers_on_every_replica(facility, bearer(before["access_token"])).values()) == {401}
    assert set(answers_on_every_replica(facility, bearer(refreshed.json()["access_token"])).values()) == {200}


# ── OIDC (the stack switches mode: keep these last in the module) ────────────────────

@pytest.fixture(scope="module")
def oidc(facility):
    """The same stack, `make up` again with TILED_AUTH=oidc against the test provider."""
    text = facility.env_path.read_text().replace("TILED_AUTH=ldap", "TILED_AUTH=oidc")
    text += ("TILED_OIDC_WELL_KNOWN_URI=http://oidc:9400/.well-known/openid-configuration\n"
             "TILED_OIDC_CLIENT_ID=tiled\nTILED_OIDC_CLIENT_SECRET=tiled-test-secret\n")
    facility.env_path.write_text(text)
    make("up", facility.env_path)
    return Stack(env_path=facility.env_path)


def browser(stack: Stack) -> httpx.Client:
    """A browser on this host: it reaches the test provider, named oidc:9400 inside the stack,
    at its published port (as /etc/hosts would send it)."""
    port = stack.values["OIDC_PORT"]

    def resolve(request: httpx.Request):
        if request.url.host == "oidc":
            request.url = request.url.copy_with(host="127.0.0.1", port=int(port))
            request.headers["host"] = "oidc:9400"
    return httpx.Client(verify=tls(stack), timeout=30, event_hooks={"request": [resolve]})


def sign_in_at_the_provider(web: httpx.Client, authorization_url: str, user: str) -> str:
    page = web.get(authorization_url)
    assert page.status_code == 200
    redirect = web.post(authorization_url, data={"sub": user})
    assert redirect.status_code == 302
    return redirect.headers["location"]


def test_oidc_code_flow_through_haproxy_with_every_redirect_on_the_public_https_name(oidc):
    public = oidc.local_url
    with browser(oidc) as web:
        start = web.get(f"{public}/api/v1/auth/provider/oidc/authorize", params={"state": "s1"})
        assert start.status_code in (302, 307)
        authorization_url = start.headers["location"]
        redirect_uri = httpx.URL(authorization_url).params["redirect_uri"]
        assert redirect_uri == f"{public}/api/v1/auth/provider/oidc/code"
        back = sign_in_at_the_provider(web, authorization_url, "alice")
        assert back.startswith(f"{public}/api/v1/auth/provider/oidc/code?")
        issued = web.get(back)
        assert issued.status_code == 200, issued.text
        access_token = issued.json()["access_token"]
        with client(oidc, headers=bearer(access_token)) as c:
            identities = c.get("/api/v1/auth/whoami").json()["identities"]
            assert [(i["provider"], i["id"]) for i in identities] == [("oidc", "alice")]
            made = c.post("/api/v1/auth/apikey", json={"scopes": ["read:metadata"], "expires_in": 600,
                                                        "note": "made after an OIDC login"})
            assert made.status_code == 200, made.text
        with client(oidc, headers=apikey(made.json()["secret"])) as c:
            assert c.get("/api/v1/metadata/").status_code == 200


def test_oidc_command_line_login_device_flow(oidc):
    """What `tiled login` and tiled.client do with an OIDC provider: a device code, a browser
    sign-in that comes back to Tiled's own page, then tokens for the polling client."""
    public = oidc.local_url
    with client(oidc) as terminal, browser(oidc) as web:
        pending = terminal.post("/api/v1/auth/provider/oidc/authorize").json()
        device_grant = {"device_code": pending["device_code"],
                        "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
        assert pending["verification_uri"].startswith(f"{public}/api/v1/auth/provider/oidc/")
        assert terminal.post("/api/v1/auth/provider/oidc/token",
                             json=device_grant).status_code == 400  # authorization pending
        back = sign_in_at_the_provider(web, pending["authorization_uri"], "bob")
        assert back.startswith(f"{public}/api/v1/auth/provider/oidc/device_code?")
        code = httpx.URL(back).params["code"]
        assert web.get(back).status_code == 200
        entered = web.post(back, data={"code": code, "user_code": pending["user_code"]})
        assert entered.status_code == 200, entered.text
        issued = terminal.post("/api/v1/auth/provider/oidc/token", json=device_grant)
        assert issued.status_code == 200, issued.text
        identities = terminal.get("/api/v1/auth/whoami", headers=bearer(issued.json()["access_token"])).json()
        assert [(i["provider"], i["id"]) for i in identities["identities"]] == [("oidc", "bob")]
