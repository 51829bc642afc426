"""`make rotate-secret-key` and `make retire-secret-key`: a new token-signing key, with nobody logged out.

Tiled signs tokens with the first of its secret keys and accepts a token signed with
any of them (TILED_AUTH=ldap|oidc; tiled/tiled_stack/auth.py lists them). Rotating:
  1. the new key is added as TILED_NEXT_SECRET_KEY and every replica is replaced
     (`make rollout`): all of them accept it before any signs with it;
  2. it becomes TILED_SECRET_KEY and the old one TILED_PREVIOUS_SECRET_KEY, and the
     replicas are replaced again: new tokens are signed with the new key, and the
     tokens and sessions signed with the old one still work;
  3. later, `make retire-secret-key` drops the old key (one more rollout). Wait until
     the refresh tokens it signed have expired (Tiled's default: 7 days), or their holders
     log in again.
Each step is written to .env before its rollout; a rerun first finishes a rollout that
was cut short (a replica still runs with other keys than .env's), so nothing is lost.
"""

import secrets
import sys

from scripts import env_file, rollout, scale
from scripts.lib.compose import Stack
from scripts.lib.say import Failure, note, ok, run_main, step

KEYS = ("TILED_SECRET_KEY", "TILED_NEXT_SECRET_KEY", "TILED_PREVIOUS_SECRET_KEY")


def set_values(changes: dict[str, str | None]) -> None:
    """Set (or, with None, remove) keys in the env file, keeping every other line."""
    path = env_file.env_path()
    lines, left = [], dict(changes)
    for line in path.read_text().splitlines():
        match = env_file.LINE.match(line)
        if match and match.group(1) in changes:
            value = left.pop(match.group(1), None)
            if value is not None:
                lines.append(f"{match.group(1)}={value}")
            continue
        lines.append(line)
    lines += [f"{key}={value}" for key, value in left.items() if value is not None]
    env_file.write_private(path, "\n".join(lines) + "\n")


def replace_replicas(why: str) -> None:
    step(f"replacing every replica, one at a time: {why}")
    rollout.main()


def replicas_behind(values: dict) -> list[str]:
    """Replicas running with other secret keys than .env's: a rollout cut short."""
    wanted = {k: values.get(k) or "" for k in KEYS}
    behind = []
    for container in scale.replicas(Stack()):
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        if any((env.get(k) or "") != v for k, v in wanted.items()):
            behind.append(container.name)
    return behind


def finish_cut_short(values: dict) -> bool:
    behind = replicas_behind(values)
    if behind:
        note(f"an earlier rotation stopped part-way: {', '.join(behind)} still run(s) with the old keys")
        replace_replicas("finishing it")
    return bool(behind)


def rotate() -> None:
    values = env_file.ensure()
    if values.get("TILED_PREVIOUS_SECRET_KEY"):
        if finish_cut_short(values):
            ok("secret key rotated: every session and token is still valid")
            return
        raise Failure("the key before the last rotation is still accepted (TILED_PREVIOUS_SECRET_KEY is set)",
                      "retire it first with `make retire-secret-key` (README \"Users and access\")")
    if not values.get("TILED_NEXT_SECRET_KEY"):
        set_values({"TILED_NEXT_SECRET_KEY": secrets.token_hex(32)})
        ok("new key written to .env as TILED_NEXT_SECRET_KEY")
    replace_replicas("each accepts the new key")
    values = env_file.ensure()
    set_values({"TILED_SECRET_KEY": values["TILED_NEXT_SECRET_KEY"], "TILED_NEXT_SECRET_KEY": None,
                 "TILED_PREVIOUS_SECRET_KEY": values["TILED_SECRET_KEY"]})
    ok("the new key signs from now on; the old one is TILED_PREVIOUS_SECRET_KEY")
    replace_replicas("each signs with the new key and still accepts the old one")
    ok("secret key rotated: every session and token is still valid")
    note("after 7 days (Tiled's refresh-token lifetime), retire the old key: make retire-secret-key")


def retire() -> None:
    values = env_file.ensure()
    if not values.get("TILED_PREVIOUS_SECRET_KEY"):
        if not finish_cut_short(values):
            ok("no previous secret key is accepted: nothing to retire")
        return
    set_values({"TILED_PREVIOUS_SECRET_KEY": None})
    replace_replicas("each forgets the old key")
    ok("old secret key retired: tokens it signed are refused; sessions refreshed since the rotation go on")


def main() -> None:
    if Stack().auth == "single-user":
        raise Failure("TILED_AUTH=single-user signs no tokens", "rotate TILED_SINGLE_USER_API_KEY by editing .env, "
                      "then `make rollout`")
    retire() if sys.argv[1:] == ["retire"] else rotate()


if __name__ == "__main__":
    run_main(main)
