"""`make clean`: remove the stack's containers AND volumes: every catalog entry, table and array.

Asks first unless FORCE=1. The .env file (secrets) is kept.
"""

import os
import shutil
import sys

from scripts.lib import side_replica
from scripts.lib.compose import STATE, Stack
from scripts.lib.say import Failure, ok, run_main, step


def confirmed(project: str) -> bool:
    if os.environ.get("FORCE") == "1":
        return True
    if not sys.stdin.isatty():
        raise Failure("`make clean` deletes all data and needs a confirmation, but there is no terminal",
                      "run `make clean FORCE=1` to confirm non-interactively")
    answer = input(f"This deletes ALL data of project {project} (catalog, tables, arrays, Redis).\n"
                   f"Type the project name to confirm: ")
    return answer.strip() == project


def main() -> None:
    stack = Stack()
    if not confirmed(stack.project):
        raise Failure("not confirmed; nothing was deleted", "rerun `make clean` and type the project name")
    step(f"removing project {stack.project}: containers, networks and volumes")
    side_replica.remove(stack.project)
    stack.run("down", "--volumes", "--remove-orphans", every_profile=True)
    shutil.rmtree(STATE / stack.project, ignore_errors=True)
    ok(f"{stack.project} removed with its data; {stack.env_path} (secrets) kept")


if __name__ == "__main__":
    run_main(main)
