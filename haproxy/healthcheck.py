"""Container healthcheck: HAProxy answers its monitor URI over HTTP.

Plain sockets: the image carries python3-minimal, which has no http package.
"""

import socket
import sys

try:
    with socket.create_connection(("127.0.0.1", 8404), timeout=4) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        status_line = conn.makefile("rb").readline().decode()
except OSError as err:
    print(f"unhealthy: {err}")
    sys.exit(1)
print(status_line.strip())
sys.exit(0 if status_line.split()[1:2] == ["200"] else 1)
