"""Reuse the SQL aliases Tiled builds to find a node by its path.

Upstream code: `node_from_segments()` in `tiled/catalog/adapter.py` (tiled
0.2.20) builds a fresh `sqlalchemy.orm.aliased(orm.Node)` for every path
segment of every request. SQLAlchemy then generates a proxy for every column
of every alias, which profiled as ≈ 1/3 of a replica's event-loop time on a
metadata GET three levels deep (py-spy, benchmarks/README.md). Not reported
upstream yet; delete this module when Tiled caches or avoids the aliases.

The fix: the same statement, built from aliases made once per path depth.
Aliases are immutable descriptions of a table; a statement only needs its
aliases to be distinct from each other, which they are within one depth. The
statements also get stable cache keys, so SQLAlchemy's compiled-SQL cache hits.

Switch: NODE_ALIAS_CACHE=off (in .env) serves with Tiled's own function.
"""

import functools

from tiled_stack import switches

SWITCH = "NODE_ALIAS_CACHE"


def enabled() -> bool:
    return switches.on(SWITCH)


def install() -> str:
    """Install the fix unless switched off; return a one-line status for the log."""
    if not enabled():
        return f"node alias cache off ({SWITCH}=off)"
    import tiled.catalog.adapter as adapter
    from sqlalchemy import select
    from sqlalchemy.orm import aliased
    from tiled.catalog import orm

    if not hasattr(adapter, "node_from_segments"):
        return "node alias cache not applicable: this Tiled has no node_from_segments"

    @functools.lru_cache(maxsize=None)
    def ancestors(depth: int) -> tuple:
        return tuple(aliased(orm.Node) for _ in range(depth))

    def node_from_segments(segments, root_id=0):
        """Select the node at `segments` below node `root_id` (as Tiled's own, with reused aliases)."""
        nodes = [*ancestors(len(segments)), orm.Node]
        statement = select(nodes[-1]).select_from(nodes[0]).where(nodes[0].id == root_id)
        for parent, child, segment in zip(nodes, nodes[1:], segments):
            statement = statement.join(child, child.parent == parent.id).where(child.key == segment)
        return statement

    node_from_segments.__wrapped__ = adapter.node_from_segments
    adapter.node_from_segments = node_from_segments
    return "node alias cache on (tiled/catalog/adapter.py node_from_segments)"
