"""Keep the response model classes Tiled parametrises on every request.

Upstream code: `construct_resource()` in `tiled/server/core.py` (tiled 0.2.20)
writes `schemas.Resource[NodeAttributes, <Links>, <Meta>]` for every node it
returns. pydantic (2.14) caches parametrised generic models in a
WeakValueDictionary, and nothing else holds these classes once the response is
sent, so the garbage collector frees them and the next request builds the
class again: model construction, field collection and a new validator, ≈ 1/5 of
a metadata GET's CPU (py-spy, benchmarks/README.md). Not reported upstream yet;
delete this module when Tiled hoists those classes or pydantic keeps them.

The fix: every class pydantic puts in its generic cache is also held here, so
it is built once per process. The cache keys are the same; only the lifetime
changes. Tiled uses a handful of parametrisations (one per structure family);
past LIMIT classes nothing more is held, so a process that parametrises without
bound cannot grow through this module.

Switch: PYDANTIC_GENERIC_CACHE=off (in .env) leaves pydantic's cache as it is.
"""

from tiled_stack import switches

SWITCH = "PYDANTIC_GENERIC_CACHE"
LIMIT = 1000


def enabled() -> bool:
    return switches.on(SWITCH)


def install() -> str:
    """Install the fix unless switched off; return a one-line status for the log."""
    import pydantic
    import pydantic._internal._generics as generics

    version = f"pydantic {pydantic.VERSION}"
    if not enabled():
        return f"generic model cache off ({SWITCH}=off; {version} unchanged)"
    if not hasattr(generics, "_generic_cache_set"):
        return f"generic model cache not applicable: {version} has no _generic_cache_set"
    original = generics._generic_cache_set
    held = {}

    def generic_cache_set(key, value):
        original(key, value)
        if len(held) < LIMIT:
            try:
                held[key] = value
            except TypeError:  # unhashable type arguments: pydantic does not cache them either
                pass

    generics._generic_cache_set = generic_cache_set
    generics._generic_cache_set.held = held
    return f"generic model cache on ({version})"
