"""`make key`, `make keys`, `make revoke-key`, `make service-account`: principals and API keys.

Run from the host by whoever runs the stack; each asks a running replica
(tiled/tiled_stack/admin.py, over `docker exec`) to work on the authentication
database, so no admin login is needed.

  make service-account NAME=bl01-acquisition   a service principal for a beamline's
                                               RunEngine, and its key (printed once)
  make key FOR=alice [SCOPES="…"] [EXPIRES=…] [NOTE=…]
                                               a key for a user (who need not have logged
                                               in yet): read-only and 30 days unless
                                               SCOPES/EXPIRES say otherwise; SERVICE=1 for
                                               a service account
  make keys [FOR=alice]                       every key: owner, scopes, expiry, last use
  make revoke-key KEY=<first eight characters> refused on every replica at once
  make access                                  apply tiled/access/tags.yml (and the
                                               directory's group membership) now
"""

import json
import os
import re
import sys

from scripts.lib.compose import Stack
from scripts.lib.docker_api import running
from scripts.lib.say import Failure, note, ok, run_main, step

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}
USER_KEY_SCOPES = "read:metadata read:data"
USER_KEY_EXPIRES = "30d"


def seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhdy]?)", text.strip())
    if not match or int(match.group(1)) == 0:
        raise Failure(f"EXPIRES={text!r} is not a duration", "write it as 3600, 90m, 12h, 30d or 1y")
    return int(match.group(1)) * UNITS[match.group(2) or "s"]


def in_replica(stack: Stack, module: str, *args: str) -> str:
    """Run a tiled_stack module in a replica; its stdout, or a Failure with its last error line."""
    if stack.auth == "single-user":
        raise Failure("TILED_AUTH=single-user: there are no users, keys or access tags, only the single API key",
                      f"set TILED_AUTH=ldap or oidc in {stack.env_path} (README \"Users and access\"), then `make up`")
    replica = running(stack.project, "tiled")
    code, (out, err) = replica.exec_run(["/opt/tiled/bin/python", "-m", module, *args], user="tiled", demux=True)
    if code:
        raise Failure((err or out or b"?").decode(errors="replace").strip().splitlines()[-1],
                      "fix the request; nothing was changed")
    return out.decode()


def admin(stack: Stack, *args: str):
    return json.loads(in_replica(stack, "tiled_stack.admin", *args))


def compile_access_tags(stack: Stack) -> None:
    step("compiling tiled/access/tags.yml into the catalog (every replica sees it at once)")
    ok(in_replica(stack, "tiled_stack.access").strip())


def key_options(values: dict) -> list[str]:
    options = []
    if values.get("SCOPES"):
        options += ["--scopes", values["SCOPES"]]
    if values.get("EXPIRES"):
        options += ["--expires-in", str(seconds(values["EXPIRES"]))]
    return options


def show_new_key(made: dict, who: str) -> None:
    ok(f"API key {made['first_eight']}… for {who}: scopes {' '.join(made['scopes'])}; "
       f"expires {made['expires'] or 'never'}")
    note("it is shown only this once; only its hash is stored:")
    print(made["api_key"], flush=True)


def main(argv: list[str], values: dict) -> None:
    stack = Stack()
    command = argv[0] if argv else ""
    if command == "service-account":
        name = values.get("NAME") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
            raise Failure("a service account needs a NAME of letters, digits and _.-",
                          "e.g. `make service-account NAME=bl01-acquisition`")
        step(f"creating service account {name} (role acquisition) if new, and a new key for it")
        made = admin(stack, "service-account", name, *key_options(values))
        show_new_key(made, f"service account {name}")
        if not made["new_principal"]:
            note(f"{name} existed: its earlier keys stay valid (`make keys FOR={name}`, `make revoke-key KEY=…`)")
        compile_access_tags(stack)  # the tags that name it now grant it
        note(f"on the beamline's acquisition machine: from_uri('{stack.url}', api_key=<key>), then "
             "RE.subscribe(TiledWriter(client))")
    elif command == "key":
        user = values.get("FOR") or ""
        if not user:
            raise Failure("make key needs FOR=<login name>", "e.g. `make key FOR=alice SCOPES=read:metadata,read:data EXPIRES=30d`")
        # A key reads, for a month, unless asked otherwise: the cheapest key to lose.
        values = {"SCOPES": USER_KEY_SCOPES, "EXPIRES": USER_KEY_EXPIRES, **{k: v for k, v in values.items() if v}}
        step(f"minting an API key for {user} (scopes {values['SCOPES']}, expires in {values['EXPIRES']})")
        extra = ["--service"] if values.get("SERVICE") else []
        note_args = ["--note", values["NOTE"]] if values.get("NOTE") else []
        made = admin(stack, "key", user, *extra, *note_args, *key_options(values))
        if made.get("new_principal"):
            note(f"{user} has never logged in: their principal was made now (check the spelling)")
        show_new_key(made, user)
    elif command == "keys":
        keys = admin(stack, "keys", *(["--user", values["FOR"]] if values.get("FOR") else []))
        for k in keys:
            print(f"  {k['first_eight']}  {k['principal']:<32} expires {k['expires'] or 'never':<32} "
                  f"last used {k['latest_activity'] or 'never':<32} {' '.join(k['scopes'])}  {k['note'] or ''}")
        ok(f"{len(keys)} API key(s)")
    elif command == "access":
        compile_access_tags(stack)
    elif command == "revoke":
        first_eight = values.get("KEY") or ""
        if not first_eight:
            raise Failure("make revoke-key needs KEY=<its first eight characters>", "`make keys` lists them")
        step(f"revoking API key {first_eight}…")
        admin(stack, "revoke", first_eight[:8])
        ok(f"API key {first_eight[:8]}… revoked: every replica refuses it from its next request")
    else:
        raise Failure(f"unknown command {command!r}", "use `make key`, `make keys`, `make revoke-key` or "
                      "`make service-account`")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:], dict(os.environ)))
