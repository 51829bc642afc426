"""Live tier: a beamline moving up keeps its data (make serve → make migrate → the stack)."""

import re

import numpy as np
import pytest
from tiled.client import from_uri

from conformance.conftest import ServeProcess
from conftest import make, storage_dsn
from scripts import migrate
from scripts.acquire import acquire
from scripts.lib.say import Failure

pytestmark = pytest.mark.live


def test_runs_move_from_a_single_process_into_the_stack(stack, tiled, tmp_path):
    single = ServeProcess(tmp_path / "serve.log", DATA_DIR=str(tmp_path / "data"))
    try:
        scan_uid, count_uid = acquire(single.url, single.api_key, points=9, frames=2)
        source = from_uri(single.url, api_key=single.api_key)
        first = make("migrate", stack.env_path, FROM=single.url, FROM_KEY=single.api_key).stdout
        again = make("migrate", stack.env_path, FROM=single.url, FROM_KEY=single.api_key).stdout
        for uid in (scan_uid, count_uid):
            before, after = source[uid], tiled[uid]
            assert after.metadata["start"] == before.metadata["start"]
            assert after.metadata["stop"] == before.metadata["stop"]
        np.testing.assert_array_equal(tiled[scan_uid]["primary"].read()["det"].values,
                                      source[scan_uid]["primary"].read()["det"].values)
        assert (tiled[count_uid]["primary"]["camera_img"].read().tobytes()
                == source[count_uid]["primary"]["camera_img"].read().tobytes())
    finally:
        single.stop()
    assert "2 runs copied, 0 partial copies replaced, 0 already complete" in first, first
    assert "0 runs copied, 0 partial copies replaced, 2 already complete" in again, again


class SourceWentAway(Exception):
    """A network error half-way through reading a run from the source."""


class CutRun:
    """A real run of the source whose document stream breaks after `after` documents."""

    def __init__(self, run, after: int):
        self.run, self.after = run, after

    def __getattr__(self, name):
        return getattr(self.run, name)

    def documents(self):
        for number, document in enumerate(self.run.documents()):
            if number == self.after:
                raise SourceWentAway("the source went away")
            yield document


class CutSource:
    """The real source client, with the runs named in `cuts` cut short: {uid: documents}."""

    def __init__(self, source, cuts: dict[str, int]):
        self.source, self.cuts = source, cuts

    def items(self):
        for uid, run in self.source.items():
            yield uid, CutRun(run, self.cuts[uid]) if uid in self.cuts else run


def assert_same_run(original, copy) -> None:
    """Same start and stop, same streams, each with the same descriptor and the same data."""
    assert copy.metadata["start"] == original.metadata["start"]
    assert copy.metadata["stop"] == original.metadata["stop"]
    assert list(copy) == list(original)
    for stream in original:
        assert dict(copy[stream].metadata) == dict(original[stream].metadata)
        copied, source = copy[stream].read(), original[stream].read()
        assert copied.identical(source), f"{stream}:\n{copied}\n≠\n{source}"


def test_a_rerun_completes_runs_whose_copy_was_interrupted(stack, tiled, values, tmp_path):
    single = ServeProcess(tmp_path / "serve.log", DATA_DIR=str(tmp_path / "data"))
    try:
        scan_uid, count_uid = acquire(single.url, single.api_key, points=9, frames=4)
        source = from_uri(single.url, api_key=single.api_key)
        assert list(source) == [scan_uid, count_uid]  # the order a copy takes them in

        # batch_size=2: rows and frames reach the stack before the cut, as they do at the
        # default batch for a run of more than 10 000 events. The scan is cut after its
        # start, descriptor and 5 events: 4 rows written, 1 still in the writer.
        with pytest.raises(Exception, match="the source went away") as scan_cut:
            migrate.migrate(CutSource(source, {scan_uid: 7}), tiled, batch_size=2)
        partial = tiled[scan_uid]
        assert partial.metadata.get("stop") is None
        table = partial.base["primary"].base["internal"]
        assert len(table.read()) == 4
        (data_source,) = table.data_sources()
        partial_rows = data_source.parameters["table_name"], data_source.parameters["dataset_id"]

        # A second try cut short too, in the image count after 2 of its 4 frames.
        with pytest.raises(Exception, match="the source went away") as count_cut:
            migrate.migrate(CutSource(source, {count_uid: 4}), tiled, batch_size=2)
        assert tiled[scan_uid].metadata.get("stop") is not None, "the partial scan was not replaced"
        assert tiled[count_uid].base["primary"].base["camera_img"].shape[0] == 2

        rerun = make("migrate", stack.env_path, FROM=single.url, FROM_KEY=single.api_key).stdout
        for uid in (scan_uid, count_uid):
            assert_same_run(source[uid], tiled[uid])
        assert (tiled[count_uid]["primary"]["camera_img"].read().tobytes()
                == source[count_uid]["primary"]["camera_img"].read().tobytes())
    finally:
        single.stop()

    # The partial scan's rows went with it, not left in tiled_storage under no node.
    import psycopg

    table_name, dataset_id = partial_rows
    with psycopg.connect(storage_dsn(stack, values)) as conn:
        (orphans,) = conn.execute(f'select count(*) from "{table_name}" where _dataset_id = %s',
                                  (dataset_id,)).fetchone()
    assert orphans == 0, f"{orphans} rows of the deleted partial scan remain in {table_name}"

    # What the operator reads: each run's fate, and what to do after an interruption.
    assert re.search(rf"already complete +{scan_uid}", rerun), rerun
    assert re.search(rf"replaced +{count_uid} +\(an earlier copy stopped part-way", rerun), rerun
    assert "0 runs copied, 1 partial copies replaced, 1 already complete (skipped)" in rerun, rerun
    for cut, uid in ((scan_cut, scan_uid), (count_cut, count_uid)):
        assert isinstance(cut.value, Failure), repr(cut.value)
        assert f"copying run {uid} stopped part-way" in cut.value.what
        assert "rerun the same `make migrate" in cut.value.next_step
