"""Start HAProxy as the haproxy user with the TLS certificate it serves; swap it live; check the config.

`start` (the image's command): with TILED_TLS=on, the certificate chain and key arrive
read-only from the host (scripts/lib/tls.py writes them, mode 0600, owned by the host's
user), which the haproxy user cannot read. As root, copy them to SERVED (owned by
haproxy, mode 0600), then drop to haproxy and exec HAProxy: no process that handles
traffic runs as root.

`reload-certificate` (run by `make reload-tls` with docker exec): hand the new files to
the running HAProxy through its admin socket (`set ssl cert`, `commit ssl cert`), then
keep them as SERVED. New handshakes get the new certificate, and no connection or
websocket stream is dropped, as a reload would risk. The key never appears on a
command line.

`check-config`: `haproxy -c` with the environment given, and a throwaway certificate
when TILED_TLS=on (the image's build and the fast tests run it).

python3-minimal only: no third-party modules.
"""

import os
import pwd
import socket
import subprocess
import sys

SOURCE = "/etc/haproxy/tls/tiled.pem"
SWARM_SOURCE = "/run/secrets/tiled.pem"  # on Docker Swarm, a Docker secret (scripts/lib/swarm.py)
SERVED = "/run/haproxy/tiled.pem"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
CONFIG = "/etc/haproxy/haproxy.cfg"
COMMAND = ["haproxy", "-W", "-db", "-f", CONFIG]


def fail(message: str) -> None:
    print(f"haproxy entrypoint: {message}", file=sys.stderr, flush=True)
    sys.exit(78)  # EX_CONFIG: a restart will not help, the operator must act


def read_certificate() -> bytes:
    source = SWARM_SOURCE if os.path.exists(SWARM_SOURCE) else SOURCE
    try:
        with open(source, "rb") as f:
            pem = f.read()
    except OSError as err:
        fail(f"TILED_TLS=on but {source} cannot be read ({err.strerror}): run `make up` (or `make swarm-up`), "
             "which creates the certificate or copies TILED_TLS_CERT there")
    if b"PRIVATE KEY-----" not in pem or b"BEGIN CERTIFICATE" not in pem:
        fail(f"{source} must hold the certificate chain and its private key in one PEM")
    # No blank lines or CRs: a blank line ends an admin-socket payload.
    return b"\n".join(line for line in pem.replace(b"\r", b"").split(b"\n") if line.strip()) + b"\n"


def keep(pem: bytes) -> None:
    """Write SERVED as haproxy's own, mode 0600; never through a link planted in /run/haproxy."""
    user = pwd.getpwnam("haproxy")
    new = SERVED + ".new"
    try:
        os.unlink(new)
    except FileNotFoundError:
        pass
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        if os.getuid() == 0:
            os.fchown(f.fileno(), user.pw_uid, user.pw_gid)
    os.replace(new, SERVED)


def admin(command: bytes) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(ADMIN_SOCKET)
        s.sendall(command)
        return s.makefile("rb").read().decode()


def secrets_into_environment() -> None:
    """On Docker Swarm, secrets are files: /run/secrets/<VARIABLE> (tiled.pem is read above)."""
    folder = os.path.dirname(SWARM_SOURCE)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.isupper():
                with open(os.path.join(folder, name)) as f:
                    os.environ.setdefault(name, f.read())


def start() -> None:
    secrets_into_environment()
    if os.environ.get("TILED_TLS") == "on":
        keep(read_certificate())
    if os.getuid() == 0:
        user = pwd.getpwnam("haproxy")
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    os.execvp(COMMAND[0], COMMAND)


def reload_certificate() -> None:
    if os.environ.get("TILED_TLS") != "on":
        fail("TLS is off in this container (TILED_TLS is not 'on'): nothing to reload")
    pem = read_certificate()
    answer = admin(b"set ssl cert " + SERVED.encode() + b" <<\n" + pem + b"\n")
    if "Transaction" not in answer:  # "Transaction created/updated for certificate …"
        admin(b"abort ssl cert " + SERVED.encode() + b"\n")
        fail(f"HAProxy refused the new certificate: {answer.strip()}")
    answer = admin(b"commit ssl cert " + SERVED.encode() + b"\n")
    if "Success" not in answer:
        fail(f"HAProxy could not commit the new certificate: {answer.strip()}")
    keep(pem)  # only now: a restart serves what HAProxy serves
    print("certificate replaced in the running HAProxy")


def check_config() -> None:
    if os.environ.get("TILED_TLS") == "on" and not os.path.exists(SERVED):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", "/CN=config-check", "-keyout", SERVED + ".key",
                        "-out", SERVED + ".crt"], check=True, capture_output=True)
        with open(SERVED, "wb") as f:
            for part in (".crt", ".key"):
                with open(SERVED + part, "rb") as p:
                    f.write(p.read())
                os.unlink(SERVED + part)
    sys.exit(subprocess.run(["haproxy", "-c", "-f", CONFIG]).returncode)


if __name__ == "__main__":
    commands = {"start": start, "reload-certificate": reload_certificate, "check-config": check_config}
    commands[sys.argv[1] if len(sys.argv) > 1 else "start"]()
