"""Run redis-server with requirepass from REDIS_PASSWORD, via a private config file.

With MONITORING_REDIS_PASSWORD (always set by `make up`), also ACL user tiled_monitor, the
Redis exporter's login (monitoring/): INFO, PING, latency and slowlog counts, no key, no
channel and no CONFIG (CONFIG GET would read requirepass). The user exists whether or not
monitoring runs, so that switching monitoring on or off never restarts Redis.
"""

import os
import sys
import tempfile

MONITOR_COMMANDS = "+ping +info +client|setname +latency|latest +memory|stats +slowlog|len +select +cluster|info"


def secrets_into_environment() -> None:
    """On Docker Swarm the secrets arrive as files, /run/secrets/<VARIABLE> (compose.swarm.yaml)."""
    folder = "/run/secrets"
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                os.environ.setdefault(name, f.read())


def main() -> None:
    password = os.environ.get("REDIS_PASSWORD")
    if not password:
        sys.exit("redis: REDIS_PASSWORD is empty; set it in .env (make up generates it)")
    for name in ("REDIS_PASSWORD", "MONITORING_REDIS_PASSWORD"):
        if any(c in os.environ.get(name, "") for c in ' "\\\n'):
            sys.exit(f"redis: {name} holds a space, quote, backslash or newline; use URL-safe characters")
    fd, path = tempfile.mkstemp(prefix="redis-", suffix=".conf")
    with os.fdopen(fd, "w") as conf:
        conf.write("include /etc/redis/tiled-stack.conf\n")
        conf.write(f'requirepass "{password}"\n')
        monitor = os.environ.get("MONITORING_REDIS_PASSWORD")
        if monitor:
            conf.write(f"user tiled_monitor on >{monitor} resetkeys resetchannels -@all {MONITOR_COMMANDS}\n")
    os.execvp("redis-server", ["redis-server", path])


if __name__ == "__main__":
    secrets_into_environment()
    main()
