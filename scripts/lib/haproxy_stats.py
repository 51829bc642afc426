"""What HAProxy sees: its server slots for the Tiled replicas, read from the stats CSV."""

import base64
import csv
import io
import re
import urllib.parse
import urllib.request

from scripts.lib.say import Failure

BACKEND = "tiled_http"
# Every backend whose server slots are the replicas (haproxy.cfg): draining covers them all.
REPLICA_BACKENDS = ("tiled_http", "tiled_stream", "tiled_front_door")


def redacted(url: str) -> str:
    """The URL without its login (user:password@), for messages."""
    return re.sub(r"//[^@/]*@", "//", url)


def servers(stats_url: str, backend: str = BACKEND) -> list[dict]:
    """Slots with an address (a replica behind them), each with name, addr and status.
    A login in the URL (Swarm: stats:<HAPROXY_STATS_PASSWORD>@) is sent as Basic auth."""
    request = urllib.request.Request(f"{redacted(stats_url)}/stats;csv")
    login = re.match(r"\w+://([^@/]*)@", stats_url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(urllib.parse.unquote(login.group(1)).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
    except OSError as err:
        raise Failure(f"HAProxy's stats page at {redacted(stats_url)}/stats does not answer ({err})",
                      "check `make status` (on Swarm, `make swarm-status`); is the haproxy service running?") from None
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [
        {"name": row["svname"], "addr": row["addr"].rsplit(":", 1)[0], "status": row["status"],
         "sessions": int(row["scur"] or 0)}
        for row in rows
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND") and row["addr"]
    ]


def up_count(stats_url: str) -> int:
    return sum(1 for s in servers(stats_url) if s["status"] == "UP")


def admin(project: str, command: str) -> str:
    """Send one command to HAProxy's admin socket (inside its container) and return the answer."""
    from scripts.lib.docker_api import running

    haproxy = running(project, "haproxy")
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock');"
            "s.sendall(sys.argv[1].encode()+b'\\n'); print(s.makefile().read())")
    result = haproxy.exec_run(["python3", "-c", code, command])
    if result.exit_code:
        raise Failure(f"HAProxy's admin socket refused {command!r}: {result.output.decode().strip()}",
                      "check `make logs SERVICE=haproxy`")
    return result.output.decode()
