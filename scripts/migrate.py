"""`make migrate FROM=http://host:8000 FROM_KEY=…`: move Bluesky runs into the stack.

For a beamline outgrowing one process (`make serve`, or an embedded server):
every Bluesky run in the source is re-played, document by document, through
TiledWriter into the stack in .env, so it is stored exactly as if acquired
there (tables in tiled_storage, frames on the shared volume). Runs already in
the stack (same uid) are skipped, so rerunning after an interruption is safe.
"""

import os

from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_uri

from scripts.compose import Stack
from scripts.say import Failure, note, ok, run_main, step


def migrate(source, target) -> tuple[list[str], list[str]]:
    """Replay every Bluesky run of `source` into `target`; return (copied, skipped) uids."""
    copied, skipped = [], []
    for uid, run in source.items():
        if "BlueskyRun" not in {spec.name for spec in run.specs}:
            continue
        if uid in target:
            skipped.append(uid)
            continue
        writer = TiledWriter(target, batch_size=10_000)
        for name, doc in run.documents():
            writer(name, doc.to_dict())  # the client hands out read-only documents
        copied.append(uid)
    return copied, skipped


def main() -> None:
    source_url, source_key = os.environ.get("FROM"), os.environ.get("FROM_KEY")
    if not source_url:
        raise Failure("no source given", "run `make migrate FROM=http://127.0.0.1:8000 FROM_KEY=<its API key>`")
    stack = Stack()
    step(f"copying Bluesky runs from {source_url} into {stack.url}")
    source = from_uri(source_url, api_key=source_key)
    target = from_uri(stack.local_url, api_key=stack.values["TILED_SINGLE_USER_API_KEY"], verify=stack.verify)
    copied, skipped = migrate(source, target)
    for uid in copied:
        note(f"copied {uid}")
    ok(f"{len(copied)} runs copied, {len(skipped)} already there (skipped)")


if __name__ == "__main__":
    run_main(main)
