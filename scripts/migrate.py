"""`make migrate FROM=http://host:8000 FROM_KEY=…`: move Bluesky runs into the stack.

For a beamline outgrowing one process (`make serve`, or an embedded server):
every Bluesky run in the source is re-played, document by document, through
TiledWriter into the stack in .env, so it is stored exactly as if acquired
there (tables in tiled_storage, frames on the shared volume).

Safe to rerun after an interruption (Ctrl-C, a network error): a run the stack
already holds in full is skipped; a run whose copy stopped part-way is deleted,
its data included, and copied again. TiledWriter writes a run's stop document
last, after every event and frame, so a copy without it is a partial one.
"""

import os
from collections import Counter

from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_uri

from scripts.lib.compose import Stack
from scripts.lib.say import Failure, note, ok, run_main, step

# Events per append: a migration replays finished runs, so few large writes beat
# the live default of one request per event.
BATCH_SIZE = 10_000
COPIED, REPLACED, COMPLETE = "copied", "replaced", "already complete"
RERUN = "rerun the same `make migrate FROM=… FROM_KEY=…`: complete runs are skipped, a partial one is replaced"


def is_bluesky_run(node) -> bool:
    return "BlueskyRun" in {spec.name for spec in node.specs}


def has_stop(node) -> bool:
    return node.metadata.get("stop") is not None


def copy_run(uid: str, run, target, batch_size: int) -> None:
    writer = TiledWriter(target, batch_size=batch_size)
    try:
        for name, doc in run.documents():
            writer(name, doc.to_dict())  # the client hands out read-only documents
    except Exception as err:
        raise Failure(f"copying run {uid} stopped part-way: {type(err).__name__}: {err}", RERUN) from err
    except KeyboardInterrupt:
        note(f"interrupted while copying run {uid}; {RERUN}")
        raise


def migrate(source, target, report=lambda uid, outcome, why: None, batch_size: int = BATCH_SIZE) -> Counter:
    """Replay every Bluesky run of `source` into `target`; count each outcome.

    `report(uid, outcome, why)` is called after each run; `outcome` is COPIED,
    REPLACED (a partial copy was deleted and the run copied again) or COMPLETE (skipped).
    """
    outcomes = Counter({COPIED: 0, REPLACED: 0, COMPLETE: 0})
    for uid, run in source.items():
        if not is_bluesky_run(run):
            continue
        outcome, why = COPIED, ""
        if uid in target:
            if has_stop(target[uid]):
                outcomes[COMPLETE] += 1
                report(uid, COMPLETE, "")
                continue
            # external_only=False: the partial copy's rows in tiled_storage and its
            # Zarr frames go too, or every retry would leave orphaned data behind.
            target[uid].delete(recursive=True, external_only=False)
            outcome, why = REPLACED, "an earlier copy stopped part-way, without the stop document: deleted, copied again"
        copy_run(uid, run, target, batch_size)
        if not has_stop(run):
            why = (why + "; " if why else "") + ("the source run never finished (no stop document), "
                                                 "so it is copied again on every rerun")
        outcomes[outcome] += 1
        report(uid, outcome, why)
    return outcomes


def main() -> None:
    source_url, source_key = os.environ.get("FROM"), os.environ.get("FROM_KEY")
    if not source_url:
        raise Failure("no source given", "run `make migrate FROM=http://127.0.0.1:8000 FROM_KEY=<its API key>`")
    stack = Stack()
    step(f"copying Bluesky runs from {source_url} into {stack.url}")
    source = from_uri(source_url, api_key=source_key)
    target = from_uri(stack.local_url, api_key=stack.values["TILED_SINGLE_USER_API_KEY"], verify=stack.verify)

    def report(uid, outcome, why):
        note(f"{outcome:<16} {uid}" + (f"  ({why})" if why else ""))

    outcomes = migrate(source, target, report)
    ok(f"{outcomes[COPIED]} runs copied, {outcomes[REPLACED]} partial copies replaced, "
       f"{outcomes[COMPLETE]} already complete (skipped)")


if __name__ == "__main__":
    run_main(main)
