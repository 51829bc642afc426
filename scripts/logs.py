"""`make logs [SERVICE=…]`: follow the services' logs (Ctrl-C to stop)."""

import os

from scripts.lib.compose import Stack
from scripts.lib.say import run_main


def main() -> None:
    service = os.environ.get("SERVICE", "")
    Stack().run("logs", "--follow", "--tail=200", *([service] if service else []), check=False)


if __name__ == "__main__":
    run_main(main)
