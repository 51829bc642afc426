"""On/off switches read from the environment (.env → compose.yaml → each replica)."""

import os


def on(name: str) -> bool:
    value = os.environ.get(name, "on").strip().lower()
    if value in ("on", "1", "true", "yes", ""):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise SystemExit(f"tiled-stack: {name}={value!r}: use on or off")
