"""A Tiled replica outside HAProxy's rotation, for comparisons and benchmarks.

It is a copy of a running replica (same environment, volumes and backend network),
of the same image or of a variant of it (e.g. tiled-stack/tiled:<version>-unpatched,
scripts/build_images.py), with a few environment variables changed if asked. It has
no `tiled` network alias, so HAProxy never sends it traffic; it is reached at its own
address on the backend network.
`make down` removes any that are left over.
"""

import time

import httpx

from scripts.lib.docker_api import backend_address, client, running
from scripts.lib.say import Failure

LABEL = "tiled-stack.side-replica"


def start(project: str, name: str, image: str | None = None, **env: str):
    """Start a side replica (of `image`, else the replicas' own); return (container, base URL).
    Replaces one of the same name."""
    template = running(project, "tiled")
    remove(project, name)
    config, host = template.attrs["Config"], template.attrs["HostConfig"]
    environment = [e for e in config["Env"] if e.split("=", 1)[0] not in env]
    environment += [f"{k}={v}" for k, v in env.items()]
    (network,) = [n for n in template.attrs["NetworkSettings"]["Networks"] if n.endswith("_backend")]
    container = client().containers.run(
        image or config["Image"], name=f"{project}_side_{name}", detach=True,
        environment=environment, user=config.get("User") or None,
        volumes=[f"{m['Source'] if m['Type'] == 'bind' else m['Name']}:{m['Destination']}:{'rw' if m['RW'] else 'ro'}"
                 for m in template.attrs["Mounts"]],
        network=network, mem_limit=host.get("Memory") or None,
        labels={LABEL: project}, stop_signal="SIGINT")
    container.reload()
    url = f"http://{backend_address(container)}:8000"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return container, url
        except httpx.HTTPError:
            pass
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.5)
    logs = container.logs(tail=30).decode(errors="replace")
    remove(project, name)
    raise Failure(f"side replica {name} did not become healthy:\n{logs}", "read the log above")


def remove(project: str, name: str | None = None) -> None:
    """Remove this project's side replicas (one, or all)."""
    for c in client().containers.list(all=True, filters={"label": f"{LABEL}={project}"}):
        if name is None or c.name == f"{project}_side_{name}":
            c.remove(force=True)
