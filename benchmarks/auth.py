"""What logging in costs, and what authentication adds to a read: part of `make bench`.

Beside the running stack (whatever its TILED_AUTH), on its backend network:
  - the test directory (tiled-stack/ldap, the idp profile's image), and
  - a side replica with TILED_AUTH=ldap against it, on the stack's own databases
    (tiled_authn included; the init job makes it in every mode), signing with a key of
    its own: its tokens are worth nothing on the stack. Its sessions and its key are
    revoked at the end.
Measured, one client at a time, each replica reached at its own address:
  - login: POST /api/v1/auth/provider/ldap/token (an LDAP bind, a session row, two
    signed tokens); refresh: POST /api/v1/auth/session/refresh;
  - the same read (GET /api/v1/metadata/ of the root) with the single-user key on a
    stack replica of the same image, with a user's access token (a signature check,
    then the access-tag filter) and with that user's API key (a lookup in tiled_authn,
    which also records the key's last use, then the filter).
"""

import asyncio
import secrets
import statistics
import time

import httpx

from benchmarks import load
from scripts import build_images
from scripts.lib import side_replica
from scripts.lib.docker_api import client, running
from scripts.lib.say import Failure, note, step

PEOPLE = "ou=people,dc=facility,dc=test"
USER = ("alice", "alice-password")
READ = "/api/v1/metadata/"


def start_directory(project: str) -> str:
    """The test directory beside the stack; its name on the backend network."""
    build_images.main({"idp"})
    image = build_images.compose_builds()["ldap"]["image"]
    template = running(project, "tiled")
    (network,) = [n for n in template.attrs["NetworkSettings"]["Networks"] if n.endswith("_backend")]
    name = f"{project}_side_bench_ldap"
    side_replica.remove(project, "bench_ldap")
    client().containers.run(image, name=name, detach=True, network=network, labels={side_replica.LABEL: project},
                            mem_limit="64m")
    return name


def timed(call, n: int) -> dict:
    """n sequential calls: latency percentiles in ms (every call must succeed)."""
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    return {"n": n, "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[int(0.95 * (n - 1))], 1), "max_ms": round(latencies[-1], 1)}


SESSIONS: list[str] = []  # refresh tokens of this run's sessions, revoked at the end


def login(url: str) -> dict:
    answer = httpx.post(f"{url}/api/v1/auth/provider/ldap/token", timeout=30,
                        data={"username": USER[0], "password": USER[1]})
    if answer.status_code != 200:
        raise Failure(f"login at the benchmark's side replica: {answer.status_code} {answer.text[:200]}",
                      "read the side replica's log (docker logs <project>_side_bench_auth)")
    SESSIONS.append(answer.json()["refresh_token"])
    return answer.json()


def read_loop(url: str, headers: dict, seconds: float, repeats: int) -> dict:
    async def request(session, rng):
        async with session.get(f"{url}{READ}", headers=headers) as r:
            await r.read()
            return r.status

    point = load.summarise([asyncio.run(load.closed_loop(request, 1, seconds, warmup=0.3)) for _ in range(repeats)])
    if set(point["statuses"]) != {"200"}:
        raise Failure(f"benchmark reads answered {point['statuses']}", "read the side replica's log")
    return point


def measure(project: str, stack_url: str, single_user_key: str, seconds: float, repeats: int,
            logins: int) -> dict:
    step("authentication: a side replica with TILED_AUTH=ldap against a test directory, beside the stack")
    directory = start_directory(project)
    try:
        _, url = side_replica.start(
            project, "bench_auth", TILED_AUTH="ldap", TILED_LDAP_URI=f"ldap://{directory}:389",
            TILED_LDAP_STARTTLS="off", TILED_LDAP_BIND_DN_TEMPLATE=f"uid={{username}},{PEOPLE}",
            TILED_LDAP_ALLOWED_GROUPS="", TILED_LDAP_GROUP_BASE="", TILED_ADMINS="",
            TILED_SECRET_KEY=secrets.token_hex(32), TILED_PREVIOUS_SECRET_KEY="", TILED_NEXT_SECRET_KEY="")
        deadline = time.monotonic() + 60
        while True:  # slapd may still be loading its seed
            try:
                tokens = login(url)
                break
            except Failure:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        own = {"Authorization": f"Bearer {tokens['access_token']}"}
        key = httpx.post(f"{url}/api/v1/auth/apikey", timeout=30, headers=own,
                         json={"scopes": ["read:metadata"], "expires_in": 3600, "note": "make bench"}).json()["secret"]
        refresh = {"token": tokens["refresh_token"]}

        def refresh_once():
            answer = httpx.post(f"{url}/api/v1/auth/session/refresh", json={"refresh_token": refresh["token"]},
                                timeout=30)
            answer.raise_for_status()
            refresh["token"] = answer.json()["refresh_token"]

        out = {"login": timed(lambda: login(url), logins), "refresh": timed(refresh_once, logins), "reads": {}}
        for label, target, headers in (
                ("single-user key", stack_url, {"Authorization": f"Apikey {single_user_key}"}),
                ("user access token", url, {"Authorization": f"Bearer {login(url)['access_token']}"}),
                ("user API key", url, {"Authorization": f"Apikey {key}"})):
            out["reads"][label] = read_loop(target, headers, seconds, repeats)
        base = out["reads"]["single-user key"]["p50_ms"]
        for label, point in out["reads"].items():
            note(f"auth      {label:18} GET {READ}: p50 {point['p50_ms']:.1f} ms ({point['p50_ms'] - base:+.1f} ms), "
                 f"{point['throughput']:.1f}/s")
        note(f"auth      login p50 {out['login']['p50_ms']} ms (p95 {out['login']['p95_ms']}), "
             f"refresh p50 {out['refresh']['p50_ms']} ms")
        httpx.delete(f"{url}/api/v1/auth/apikey", params={"first_eight": key[:8]}, headers=own, timeout=30)
        for token in [*SESSIONS, refresh["token"]]:
            httpx.post(f"{url}/api/v1/auth/session/revoke", json={"refresh_token": token}, timeout=30)
        SESSIONS.clear()
        return out
    finally:
        side_replica.remove(project, "bench_auth")
        side_replica.remove(project, "bench_ldap")
