"""Run redis-server with requirepass from REDIS_PASSWORD, via a private config file."""

import os
import sys
import tempfile


def main() -> None:
    password = os.environ.get("REDIS_PASSWORD")
    if not password:
        sys.exit("redis: REDIS_PASSWORD is empty; set it in .env (make up generates it)")
    fd, path = tempfile.mkstemp(prefix="redis-", suffix=".conf")
    with os.fdopen(fd, "w") as conf:
        conf.write("include /etc/redis/tiled-stack.conf\n")
        conf.write(f'requirepass "{password}"\n')
    os.execvp("redis-server", ["redis-server", path])


if __name__ == "__main__":
    main()
