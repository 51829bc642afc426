"""Fast tier: the child-count fix (tiled/tiled_stack/child_count_batch.py) is installed
on Tiled's catalog container adapter when on, and leaves it untouched when off.

That it answers exactly what Tiled's own per-child query answers is checked live,
against PostgreSQL, by tests/test_cpu_fixes_live.py (pages of containers with 0, 1
and exactly exact_count_limit children, fixes on and off, byte-identical).
"""

from conftest import probe_tiled_stack

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tiled.catalog.adapter import CatalogContainerAdapter as C
before = {name: getattr(C, name) for name in ("items_page", "items_range", "lbound_len")}
from tiled_stack import child_count_batch
status = child_count_batch.install()
print(json.dumps({"status": status, "replaced": sorted(n for n, f in before.items() if getattr(C, n) is not f)}))
"""


def test_on_wraps_the_page_and_count_methods():
    on = probe_tiled_stack(PROBE, {"CHILD_COUNT_BATCH": "on"})
    assert on == {"status": "child count batch on", "replaced": ["items_page", "items_range", "lbound_len"]}


def test_off_leaves_tiled_unchanged():
    off = probe_tiled_stack(PROBE, {"CHILD_COUNT_BATCH": "off"})
    assert off == {"status": "child count batch off (CHILD_COUNT_BATCH=off)", "replaced": []}
