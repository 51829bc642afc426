"""`make reload-tls`: serve a renewed TLS certificate without a restart or a dropped connection.

Checks the certificate again (TILED_TLS_CERT, or the generated one), copies it where
HAProxy's container reads it, and hands it to the running HAProxy through its admin
socket (haproxy/entrypoint.py reload-certificate). Safe to rerun; run it from certbot's
or the facility's renewal hook.
"""

from scripts.lib import tls
from scripts.lib.compose import Stack
from scripts.lib.docker_api import running
from scripts.lib.say import Failure, ok, run_main, step


def main() -> None:
    """`make reload-tls`: serve the current certificate without dropping a connection."""
    stack = Stack()
    if tls.mode(stack.values) != "on":
        raise Failure(f"TLS is off (TILED_TLS={tls.mode(stack.values)} in {stack.env_path})",
                      "set TILED_TLS=on and run `make up`")
    tls.ensure(stack.values, stack.env_path)
    haproxy = running(stack.project, "haproxy")
    step(f"handing the certificate to {haproxy.name} (no restart)")
    result = haproxy.exec_run(["python3", "/usr/local/bin/entrypoint.py", "reload-certificate"])
    if result.exit_code:
        raise Failure(f"HAProxy did not take the certificate: {result.output.decode().strip()}",
                      "the old certificate is still served; `make logs SERVICE=haproxy` shows more")
    ok(f"new handshakes at {stack.url} get the new certificate; open connections were kept")


if __name__ == "__main__":
    run_main(main)
