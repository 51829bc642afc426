"""How every operator-facing script talks: one line per step, and a way out on failure."""

import sys


def step(message: str) -> None:
    print(f"▶ {message}", flush=True)


def ok(message: str) -> None:
    print(f"✓ {message}", flush=True)


def note(message: str) -> None:
    print(f"  {message}", flush=True)


class Failure(Exception):
    """A failure the operator can act on: what went wrong, then what to do next."""

    def __init__(self, what: str, next_step: str):
        super().__init__(f"{what}\n  → {next_step}")
        self.what = what
        self.next_step = next_step


def run_main(main) -> None:
    """Run a script's main(), turning a Failure into a message and exit 1."""
    try:
        main()
    except Failure as failure:
        print(f"✗ {failure.what}\n  → {failure.next_step}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("✗ interrupted", file=sys.stderr)
        sys.exit(130)
