"""Run our own code on the app Tiled builds, before it serves a request.

`tiled serve config` imports `tiled.server.app.build_app_from_config` when it
runs; each hook added here receives the built app (readiness, input guards).
"""

_hooks = []


def after_build(hook) -> None:
    """Call `hook(app)` on every app `build_app_from_config` returns (installed once)."""
    import tiled.server.app as tiled_app

    if not _hooks:
        original = tiled_app.build_app_from_config

        def build_app_from_config(*args, **kwargs):
            app = original(*args, **kwargs)
            for each in _hooks:
                each(app)
            return app

        tiled_app.build_app_from_config = build_app_from_config
    _hooks.append(hook)
