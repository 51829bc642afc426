"""Count the children of every container on a page in one query, not one each.

Upstream code: for each container in a search or listing page, `construct_resource()`
in `tiled/server/core.py` (tiled 0.2.20) calls `len_or_approx()`, which calls
`CatalogNodeAdapter.lbound_len(threshold)`: a session of its own (pool checkout,
BEGIN, one `count(*)` of at most threshold + 1 rows, ROLLBACK) per container. A
20-item page of containers is 20 of those, about half of a search's CPU in the
replica and most of PostgreSQL's (py-spy, benchmarks/README.md). Not reported
upstream yet; delete this module when Tiled counts a page's children at once.

The fix: when `items_page()` / `items_range()` return a page, the children of
every plain container on it (no data source, so counted in the catalog) are
counted in one statement, each count stopping at exact_count_limit + 1 rows as
`lbound_len` does, and stored on that child's adapter. `lbound_len` then answers
from it, for that same threshold only; anything else (another threshold, deep or
filtered adapters, other databases) runs Tiled's own query. A child fetched in
the same request is counted in the same request, so the figure is as current as
Tiled's own.

Switch: CHILD_COUNT_BATCH=off (in .env) serves with Tiled's one-query-per-child.
"""

from tiled_stack import app_hooks, switches

SWITCH = "CHILD_COUNT_BATCH"
ATTRIBUTE = "_tiled_stack_lbound"


def enabled() -> bool:
    return switches.on(SWITCH)


def install() -> str:
    """Install the fix unless switched off; return a one-line status for the log."""
    if not enabled():
        return f"child count batch off ({SWITCH}=off)"
    from sqlalchemy import text
    from tiled.catalog import adapter
    from tiled.server.settings import get_settings

    container_class = adapter.CatalogContainerAdapter
    needed = ("items_page", "items_range", "lbound_len")
    if not all(hasattr(container_class, name) for name in needed):
        return "child count batch not applicable: this Tiled's catalog adapter differs"
    limit = {}  # the app's exact_count_limit, read once it is built

    def remember_limit(app):
        settings = app.dependency_overrides.get(get_settings, get_settings)()
        limit["value"] = settings.exact_count_limit

    app_hooks.after_build(remember_limit)
    count_each = text(
        "SELECT p.id, (SELECT count(*) FROM (SELECT 1 FROM nodes WHERE nodes.parent = p.id LIMIT :cap) AS c) "
        "FROM unnest(CAST(:ids AS INTEGER[])) AS p(id)"
    )

    def countable(entry) -> bool:
        return (isinstance(entry, container_class) and not entry.node.data_sources
                and not entry.deep and not entry.conditions and not entry.access_filters)

    async def count_children(parent, items):
        threshold = limit.get("value")
        children = [entry for _, entry in items if countable(entry)]
        if (not children or not isinstance(threshold, int) or threshold < 0
                or parent.context.engine.dialect.name != "postgresql"):
            return
        async with parent.context.session() as db:
            rows = (await db.execute(count_each, {"cap": threshold + 1,
                                                  "ids": [c.node.id for c in children]})).all()
        counts = dict(rows)
        for child in children:
            setattr(child, ATTRIBUTE, (threshold, counts[child.node.id]))

    items_page, items_range, lbound_len = (getattr(container_class, name) for name in needed)

    async def items_page_counted(self, *args, **kwargs):
        items, next_cursor = await items_page(self, *args, **kwargs)
        await count_children(self, items)
        return items, next_cursor

    async def items_range_counted(self, *args, **kwargs):
        items = await items_range(self, *args, **kwargs)
        await count_children(self, items)
        return items

    async def lbound_len_counted(self, threshold):
        counted = getattr(self, ATTRIBUTE, None)
        if counted is not None and counted[0] == threshold and countable(self):
            return counted[1]
        return await lbound_len(self, threshold)

    container_class.items_page = items_page_counted
    container_class.items_range = items_range_counted
    container_class.lbound_len = lbound_len_counted
    return "child count batch on"
