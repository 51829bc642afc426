"""Container healthcheck: HAProxy answers its monitor URI over HTTP."""

import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:8404/healthz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as err:
    print(f"unhealthy: {err}")
    sys.exit(1)
