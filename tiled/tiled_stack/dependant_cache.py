"""Stop FastAPI from re-analysing every dependency on every request.

Upstream bug: fastapi/fastapi#5562 (fix proposed in PRs #14441 and #16342, in
no release up to fastapi 0.165.0). Delete this module once a FastAPI release
that Tiled accepts reuses the route's dependency graph when overrides exist.

Why Tiled pays for it: `tiled/server/app.py` sets
`app.dependency_overrides[get_settings]` once, when the app is built. As soon
as *any* override exists, FastAPI's `solve_dependencies()` calls
`get_dependant()` for every sub-dependency of every request: signature
inspection, type analysis and pydantic field creation, ≈ 390 calls per
metadata GET, ≈ 40 % of a replica's CPU.

The fix: `solve_dependencies` runs with a memoised `get_dependant`. It is
FastAPI's own function (same code object) bound to a copy of its module's
globals in which only `get_dependant` differs, so no FastAPI code is copied
here. The memo key is every argument `solve_dependencies` passes, including
the callable that wins after overrides, so the result is the graph FastAPI
would have built itself; an override changed at run time simply gets a new
entry. What it assumes is what Tiled does: a fixed, small set of callables.

Switch: FASTAPI_DEPENDANT_CACHE=off (in .env) serves with FastAPI unchanged.
"""

import sys
import types

import fastapi
import fastapi.dependencies.utils as fastapi_utils
import fastapi.routing

from tiled_stack import switches

SWITCH = "FASTAPI_DEPENDANT_CACHE"


def enabled() -> bool:
    return switches.on(SWITCH)


def memoised(get_dependant):
    memo = {}

    def get_dependant_once(**kwargs):
        try:
            key = tuple(
                (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(kwargs.items())
            )
            return memo[key]
        except TypeError:  # an unhashable callable or argument: build as FastAPI does
            return get_dependant(**kwargs)
        except KeyError:
            return memo.setdefault(key, get_dependant(**kwargs))

    get_dependant_once.memo = memo
    return get_dependant_once


def patched_solve_dependencies():
    original = fastapi_utils.solve_dependencies
    scope = dict(original.__globals__)
    scope["get_dependant"] = memoised(fastapi_utils.get_dependant)
    patched = types.FunctionType(
        original.__code__, scope, original.__name__, original.__defaults__, original.__closure__
    )
    patched.__kwdefaults__ = original.__kwdefaults__
    patched.__qualname__ = original.__qualname__
    patched.__doc__ = original.__doc__
    scope["solve_dependencies"] = patched  # its recursive calls stay patched
    return patched


def install() -> str:
    """Install the fix unless switched off; return a one-line status for the log."""
    version = f"fastapi {fastapi.__version__}"
    if not enabled():
        return f"dependant cache off ({SWITCH}=off; {version} unchanged)"
    if "get_dependant" not in fastapi_utils.solve_dependencies.__code__.co_names:
        return f"dependant cache not needed: {version} no longer rebuilds dependencies per request"
    fastapi.routing.solve_dependencies = patched_solve_dependencies()
    return f"dependant cache on ({version}; fastapi#5562 workaround)"


if __name__ == "__main__":
    print(install(), file=sys.stderr)
