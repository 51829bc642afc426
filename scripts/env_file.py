"""Create .env from .env.example on first run; fill only missing secrets.

Rule: in .env.example, an uncommented key with an empty value is a secret,
generated here. A value already in .env is never changed. Safe to rerun.
"""

import importlib.util
import os
import re
import secrets
import tempfile
from pathlib import Path

from scripts.lib.say import Failure, note, ok, run_main, step

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"
LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
URL_SAFE = re.compile(r"^[A-Za-z0-9_.~-]+$")


def env_path() -> Path:
    """The env file in use: STACK_ENV_FILE (tests, second stacks) or ./.env."""
    return Path(os.environ.get("STACK_ENV_FILE") or ROOT / ".env")


def parse(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            key, value = match.groups()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key] = value
    return values


def secret_keys() -> list[str]:
    """The secrets `make up` generates: .env.example's uncommented keys with empty values."""
    return [key for key, value in parse(EXAMPLE.read_text()).items() if value == ""]


# Secrets an operator (or `make rotate-secret-key`) writes into .env: never generated,
# never backed up either.
GIVEN_SECRETS = ("TILED_OIDC_CLIENT_SECRET", "TILED_LDAP_SEARCH_PASSWORD", "TILED_PREVIOUS_SECRET_KEY",
                 "TILED_NEXT_SECRET_KEY")


def all_secrets() -> list[str]:
    return [*secret_keys(), *GIVEN_SECRETS]


def write_private(path: Path, text: str) -> None:
    """Write to a 0600 temp file beside the target, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def fill_secrets(text: str, missing: list[str]) -> str:
    """Set each missing secret where its key stands empty, or append it."""
    generated = {key: secrets.token_hex(32) for key in missing}
    lines = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match and match.group(1) in generated and match.group(2) == "":
            line = f"{match.group(1)}={generated.pop(match.group(1))}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in generated.items()]
    return "\n".join(lines) + "\n"


def auth_module():
    """tiled/tiled_stack/auth.py, the one declaration of TILED_AUTH's modes and variables
    (it runs in the Tiled image; it imports nothing from Tiled at module level)."""
    spec = importlib.util.spec_from_file_location("tiled_stack_auth", ROOT / "tiled" / "tiled_stack" / "auth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def validate(values: dict[str, str], path: Path) -> None:
    problems = auth_module().problems(values)
    if problems:
        raise Failure(f"the authentication settings in {path} are incomplete:\n    " + "\n    ".join(problems),
                      f"set them in {path} (.env.example lists each; README \"Users and access\")")
    for key in secret_keys():
        if not URL_SAFE.match(values.get(key, "")):
            raise Failure(f"{key} in {path} has characters that break a database URL",
                          "use only letters, digits and _.~- (or delete the line and rerun `make up` to generate one)")
    for key in ("TILED_REPLICAS", "TILED_MAX_REPLICAS", "TILED_PORT", "HAPROXY_STATS_PORT",
                "HAPROXY_MAXCONN_PER_REPLICA", "HAPROXY_MAX_BODY_BYTES", "HAPROXY_AUTH_FAIL_LIMIT"):
        if key in values and not values[key].isdigit():
            raise Failure(f"{key}={values[key]!r} in {path} is not a whole number", f"fix it in {path}")
    if values.get("HAPROXY_AUTH_FAIL_LIMIT", "10") == "0":
        raise Failure(f"HAPROXY_AUTH_FAIL_LIMIT=0 in {path} would refuse every request", f"set 1 or more in {path}")
    if values.get("TILED_HTTP_PORT", "off") != "off" and not values["TILED_HTTP_PORT"].isdigit():
        raise Failure(f"TILED_HTTP_PORT={values['TILED_HTTP_PORT']!r} in {path} is not a port number or off",
                      f"fix it in {path}")
    if not re.fullmatch(r"\d+[smh]", values.get("HAPROXY_AUTH_FAIL_WINDOW", "30s")):
        raise Failure(f"HAPROXY_AUTH_FAIL_WINDOW={values['HAPROXY_AUTH_FAIL_WINDOW']!r} in {path} is not a duration",
                      f"write it as HAProxy does, e.g. 30s, 5m or 1h, in {path}")
    if int(values.get("HAPROXY_MAX_BODY_BYTES", "1")) > 999_999_999:
        raise Failure(f"HAPROXY_MAX_BODY_BYTES in {path} is above 999999999 (HAProxy 2.6's 32-bit comparison)",
                      f"set it to 999999999 or less in {path}")
    replicas = int(values.get("TILED_REPLICAS", "3"))
    ceiling = int(values.get("TILED_MAX_REPLICAS", "8"))
    if not 1 <= replicas <= ceiling:
        raise Failure(f"TILED_REPLICAS={replicas} is outside 1..TILED_MAX_REPLICAS ({ceiling})",
                      f"set TILED_REPLICAS (or raise TILED_MAX_REPLICAS) in {path}")


def ensure() -> dict[str, str]:
    """Make sure the env file exists with every secret set; return its values."""
    path = env_path()
    if not path.exists():
        step(f"creating {path} from .env.example with new random secrets")
        write_private(path, fill_secrets(EXAMPLE.read_text(), secret_keys()))
        ok(f"{path} created (mode 0600); keep it out of git and back it up with your data")
    else:
        text = path.read_text()
        missing = [key for key in secret_keys() if not parse(text).get(key)]
        if missing:
            step(f"adding missing secrets to {path}: {', '.join(missing)}")
            write_private(path, fill_secrets(text, missing))
        else:
            ok(f"{path} already has every secret, left unchanged")
        if path.stat().st_mode & 0o077:
            note(f"{path} was readable by other users: setting mode 0600")
            os.chmod(path, 0o600)
    values = parse(path.read_text())
    validate(values, path)
    return values


def main() -> None:
    ensure()


if __name__ == "__main__":
    run_main(main)
