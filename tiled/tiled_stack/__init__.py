"""tiled-stack's entry points inside the Tiled image (serve, init, health).

On Docker Swarm the stack's secrets arrive as files, /run/secrets/<VARIABLE>
(compose.swarm.yaml), not as environment variables. Every entry point is a module of
this package, so importing it first makes them the variables they stand for.
"""

import os

_SECRETS = "/run/secrets"

if os.path.isdir(_SECRETS):
    for _name in os.listdir(_SECRETS):
        with open(os.path.join(_SECRETS, _name)) as _f:
            os.environ.setdefault(_name, _f.read())
