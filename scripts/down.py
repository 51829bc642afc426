"""`make down`: stop and remove the stack's containers; volumes (all data) are kept."""

from scripts.lib import side_replica
from scripts.lib.compose import Stack
from scripts.lib.say import ok, run_main, step


def main() -> None:
    stack = Stack()
    step(f"stopping project {stack.project} (data volumes are kept)")
    side_replica.remove(stack.project)  # benchmark/comparison replicas, if any are left
    stack.run("down", "--remove-orphans", every_profile=True)
    ok(f"{stack.project} stopped; `make up` starts it again with the same data")


if __name__ == "__main__":
    run_main(main)
