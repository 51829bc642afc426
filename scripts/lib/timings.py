"""The last measured duration of operator commands, for `make bench`'s report.

Kept in .state/timings.json (not committed): name → seconds, when, and what it did.
"""

import datetime
import json

from scripts.lib.compose import STATE

PATH = STATE / "timings.json"


def record(name: str, seconds: float, **detail) -> None:
    data = read()
    data[name] = {"seconds": round(seconds, 1), "at": datetime.datetime.now().isoformat(timespec="seconds"),
                  **detail}
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(json.dumps(data, indent=2) + "\n")


def read() -> dict:
    try:
        return json.loads(PATH.read_text())
    except (OSError, ValueError):
        return {}
