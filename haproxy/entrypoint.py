"""Start HAProxy as the haproxy user, with the TLS certificate it serves; swap that certificate live.

`start` (the image's command): with TILED_TLS=on, the certificate chain and key arrive
read-only from the host (scripts/tls.py writes them, mode 0600, owned by the host's
user), which the haproxy user cannot read. As root, copy them to SERVED (owned by
haproxy, mode 0600), then drop to haproxy and exec HAProxy: no process that handles
traffic runs as root.

`reload-certificate` (run by `make reload-tls` with docker exec): copy the new files
again and hand them to the running HAProxy through its admin socket (`set ssl cert`,
`commit ssl cert`): new handshakes get the new certificate, and no connection or
websocket stream is dropped, as a reload would risk. The key never appears on a
command line.

python3-minimal only: no third-party modules.
"""

import os
import pwd
import socket
import sys

SOURCE = "/etc/haproxy/tls/tiled.pem"
SERVED = "/run/haproxy/tiled.pem"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
COMMAND = ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]


def fail(message: str) -> None:
    print(f"haproxy entrypoint: {message}", file=sys.stderr, flush=True)
    sys.exit(78)  # EX_CONFIG: a restart will not help, the operator must act


def copy_certificate(user) -> bytes:
    try:
        with open(SOURCE, "rb") as f:
            pem = f.read()
    except OSError as err:
        fail(f"TILED_TLS=on but {SOURCE} cannot be read ({err.strerror}): run `make up`, "
             "which creates the certificate or copies TILED_TLS_CERT there")
    if b"PRIVATE KEY-----" not in pem or b"BEGIN CERTIFICATE" not in pem:
        fail(f"{SOURCE} must hold the certificate chain and its private key in one PEM")
    fd = os.open(SERVED + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    if os.getuid() == 0:
        os.chown(SERVED + ".new", user.pw_uid, user.pw_gid)
    os.replace(SERVED + ".new", SERVED)
    return pem


def admin(command: bytes) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(ADMIN_SOCKET)
        s.sendall(command)
        return s.makefile("rb").read().decode()


def start() -> None:
    user = pwd.getpwnam("haproxy")
    if os.environ.get("TILED_TLS") == "on":
        copy_certificate(user)
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    os.execvp(COMMAND[0], COMMAND)


def reload_certificate() -> None:
    if os.environ.get("TILED_TLS") != "on":
        fail("TLS is off in this container (TILED_TLS is not 'on'): nothing to reload")
    pem = copy_certificate(pwd.getpwnam("haproxy"))
    answer = admin(b"set ssl cert " + SERVED.encode() + b" <<\n" + pem.strip() + b"\n\n")
    if "Transaction" not in answer:  # "Transaction created/updated for certificate …"
        fail(f"HAProxy refused the new certificate: {answer.strip()}")
    answer = admin(b"commit ssl cert " + SERVED.encode() + b"\n")
    if "Success" not in answer:
        fail(f"HAProxy could not commit the new certificate: {answer.strip()}")
    print("certificate replaced in the running HAProxy")


if __name__ == "__main__":
    {"start": start, "reload-certificate": reload_certificate}[sys.argv[1] if len(sys.argv) > 1 else "start"]()
