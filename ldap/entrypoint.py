"""Run slapd for the test facility's directory: load seed.ldif on first start, TLS if given.

Starts as root only to read a certificate it may be given and to bind the ports; slapd
then runs as openldap (`-u`), and the database is made as openldap.

- First start (no database): every entry of seed.ldif, each userPassword stored as a
  salted SHA-1 hash ({SSHA}), loaded with slapadd. A restarted container keeps its
  directory, changes included; a new container begins again from the seed.
- A certificate chain and its private key in one PEM at /run/ldap/tls.pem (optional):
  ldaps:// on 636 and StartTLS on 389 as well as plain ldap:// on 389.
"""

import base64
import hashlib
import os
import pwd
import subprocess
import sys

CONFIG = "/etc/ldap/tiled-stack/slapd.conf"  # everything but TLS
SEED = "/etc/ldap/tiled-stack/seed.ldif"
DATABASE = "/var/lib/ldap/data.mdb"
RUN = "/run/slapd"
TLS_SOURCE = "/run/ldap/tls.pem"
TLS_SERVED = os.path.join(RUN, "tls.pem")
USER = "openldap"


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def hashed_seed() -> str:
    """seed.ldif with each plain `userPassword: …` replaced by its {SSHA} hash."""
    lines = []
    with open(SEED) as f:
        for line in f:
            name, colon, value = line.partition(":")
            if colon and name.lower() == "userpassword" and not value.startswith(":"):
                line = f"userPassword: {ssha(value.strip())}\n"
            lines.append(line)
    return "".join(lines)


def load_seed(user: pwd.struct_passwd) -> None:
    seed = hashed_seed()
    entries = sum(1 for line in seed.splitlines() if line.lower().startswith("dn:"))
    print(f"▶ first start: loading {entries} entries from seed.ldif into dc=facility,dc=test", flush=True)
    # As openldap, so that slapd (which drops to it) owns every file of the database.
    done = subprocess.run(["slapadd", "-q", "-f", CONFIG], input=seed, text=True,
                          user=user.pw_uid, group=user.pw_gid)
    if done.returncode:
        # Nothing half-loaded is kept: the next start loads the whole seed again.
        for name in ("data.mdb", "lock.mdb"):
            path = os.path.join(os.path.dirname(DATABASE), name)
            if os.path.exists(path):
                os.unlink(path)
        sys.exit(f"ldap: slapadd refused seed.ldif (exit {done.returncode}, its message is above); "
                 "fix ldap/seed.ldif, then rebuild the image (`make images`)")
    print(f"✓ {entries} entries loaded", flush=True)


def serve_tls(user: pwd.struct_passwd) -> bool:
    """Copy the mounted PEM where only openldap reads it; False if none is mounted."""
    if not os.path.exists(TLS_SOURCE):
        print(f"  no certificate at {TLS_SOURCE}: ldap:// on 389 only (no StartTLS, no ldaps://)", flush=True)
        return False
    with open(TLS_SOURCE, "rb") as f:
        pem = f.read()
    if b"BEGIN CERTIFICATE" not in pem or b"PRIVATE KEY-----" not in pem:
        sys.exit(f"ldap: {TLS_SOURCE} must hold the certificate chain and its private key, both in PEM")
    fd = os.open(TLS_SERVED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        os.fchown(f.fileno(), user.pw_uid, user.pw_gid)
    print(f"▶ certificate from {TLS_SOURCE}: ldaps:// on 636 and StartTLS on 389", flush=True)
    return True


def main() -> None:
    if os.getuid() != 0:
        sys.exit("ldap: start this container as root (the image's default); slapd drops to openldap")
    user = pwd.getpwnam(USER)
    tls = serve_tls(user)
    if os.path.exists(DATABASE):
        print("✓ directory dc=facility,dc=test already loaded (this container's), kept", flush=True)
    else:
        load_seed(user)
    config = os.path.join(RUN, "slapd.conf")
    with open(config, "w") as f:
        if tls:
            # Global settings: before the database section that CONFIG holds.
            f.write(f"TLSCertificateFile {TLS_SERVED}\nTLSCertificateKeyFile {TLS_SERVED}\n")
        f.write(f"include {CONFIG}\n")
    urls = "ldap:/// ldapi:///" + (" ldaps:///" if tls else "")
    print(f"▶ starting slapd as {USER}: {urls}", flush=True)
    # -d keeps slapd in the foreground, logging to stderr; `stats` logs each connection,
    # bind (with its DN and result) and search, which is what a failing login test needs.
    os.execvp("slapd", ["slapd", "-u", USER, "-g", USER, "-f", config, "-h", urls, "-d", "stats"])


if __name__ == "__main__":
    main()
