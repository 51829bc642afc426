"""Fast tier: the node-alias fix (tiled/tiled_stack/node_alias_cache.py) builds the same SQL.

For paths of several depths, the statement from the fix and from Tiled's own
`node_from_segments` compile to identical PostgreSQL and SQLite text with
identical parameters; and a repeated lookup reuses its aliases.
"""

from conftest import probe_tiled_stack

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import tiled.catalog.adapter as adapter
from sqlalchemy.dialects import postgresql, sqlite
original = adapter.node_from_segments
from tiled_stack import node_alias_cache
status = node_alias_cache.install()
fixed = adapter.node_from_segments
out = {"status": status, "replaced": fixed is not original, "same": [], "reused": None}
for segments, root in [([], 0), (["a"], 0), (["bench", "big", "n00042"], 0), (list("abcdefg"), 17)]:
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        a, b = original(segments, root).compile(dialect=dialect), fixed(segments, root).compile(dialect=dialect)
        out["same"].append([str(a) == str(b) and a.params == b.params, len(segments), dialect.name])
first, second = fixed(["x", "y"]), fixed(["p", "q"])
out["reused"] = [f.entity_namespace for f in first.get_final_froms()] == \
                [f.entity_namespace for f in second.get_final_froms()]
print(json.dumps(out))
"""


def probe(mode: str) -> dict:
    return probe_tiled_stack(PROBE, {"NODE_ALIAS_CACHE": mode})


def test_fixed_lookup_compiles_to_the_same_sql_and_reuses_aliases():
    on = probe("on")
    assert on["status"].startswith("node alias cache on") and on["replaced"]
    assert all(same for same, *_ in on["same"]), on["same"]
    assert len(on["same"]) == 8
    assert on["reused"]


def test_switched_off_leaves_tiled_unchanged():
    off = probe("off")
    assert off["status"] == "node alias cache off (NODE_ALIAS_CACHE=off)" and not off["replaced"]
