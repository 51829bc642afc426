"""Container healthcheck: the replica answers /healthz over HTTP."""

import sys
import urllib.request


def main() -> None:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=4) as response:
            sys.exit(0 if response.status == 200 else 1)
    except OSError as err:
        print(f"unhealthy: {err}")
        sys.exit(1)


if __name__ == "__main__":
    main()
