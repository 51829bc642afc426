"""HTTPS at HAProxy: the certificate it serves, made or checked here; `make reload-tls` swaps it live.

TILED_TLS=on in .env turns TLS on. With TILED_TLS_CERT (the facility's chain and key
in one PEM), that file is checked and served. Without it, a local CA and a server
certificate are made once, in tls/ beside the env file, and never rewritten:
  ca.pem, ca.key    the CA (clients trust ca.pem)
  server.pem        the server's chain and key, for the host's name, its FQDN,
                    localhost, 127.0.0.1 and TILED_TLS_NAMES
Either way the PEM HAProxy serves is copied to tls/served/tiled.pem (the only folder
mounted into the haproxy container). All files are mode 0600.

A generated server certificate is issued again by the same CA when it is within 30 days
of its end (clients that trust the CA notice nothing); a given one is only warned about.
`make reload-tls` (scripts/reload_tls.py) serves a renewed certificate without a restart.
"""

import datetime
import ipaddress
import os
import re
import socket
from pathlib import Path

from scripts.lib.say import Failure, note, ok, step

SERVED = "served/tiled.pem"
MODES = ("off", "on", "external")
SERVER_DAYS = 825  # the longest validity Apple and browsers accept for a server certificate
CA_DAYS = 3650
RENEW_WARNING = datetime.timedelta(days=30)


def mode(values: dict[str, str]) -> str:
    return values.get("TILED_TLS") or "off"


def folder(env_path: Path) -> Path:
    return env_path.parent / "tls"


def wanted_names(values: dict[str, str]) -> list[str]:
    extra = [n.strip() for n in re.split(r"[\s,]+", values.get("TILED_TLS_NAMES", "")) if n.strip()]
    names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", *extra]
    bind = values.get("TILED_BIND_ADDRESS", "127.0.0.1")
    if bind not in ("0.0.0.0", "::"):
        names.append(bind)
    return list(dict.fromkeys(names))


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def check_exposure(values: dict[str, str], env_path: Path) -> None:
    """Secure by default: plain HTTP only on a loopback address, unless TLS ends in front."""
    tls = mode(values)
    if tls not in MODES:
        raise Failure(f"TILED_TLS={tls!r} in {env_path} must be one of {', '.join(MODES)}", f"fix it in {env_path}")
    bind = values.get("TILED_BIND_ADDRESS", "127.0.0.1")
    if tls == "off" and not is_loopback(bind):
        raise Failure(f"TILED_BIND_ADDRESS={bind} serves the network, and TLS is off: API keys would cross it "
                      "in clear text",
                      f"set TILED_TLS=on in {env_path} (a certificate is made for you, or set TILED_TLS_CERT), "
                      "or TILED_TLS=external if a proxy in front of this host ends TLS, or bind to 127.0.0.1")
    if tls != "on" and values.get("TILED_TLS_CERT"):
        note(f"TILED_TLS_CERT is set but TILED_TLS={tls}: the certificate is not used")


def write_private(path: Path, data: bytes) -> None:
    """Mode 0600 from the start, moved into place whole (a reader never sees half a key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def subject_names(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(key_path: Path, cert_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tiled-stack local CA ({socket.gethostname()})")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def issue_server(ca_key_path: Path, ca_cert_path: Path, names: list[str], days: int = SERVER_DAYS) -> bytes:
    """A server certificate for `names`, signed by the CA: chain and key in one PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([subject_names(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def checked(pem: bytes, source: str):
    """The leaf certificate of a chain-and-key PEM, or a Failure that says what is wrong with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise Failure(f"{source} holds no PEM certificate", "give the certificate chain and its key in one PEM file")
    match = re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", pem, re.S)
    if not match:
        raise Failure(f"{source} holds no private key",
                      "append the key to the chain: `cat fullchain.pem privkey.pem > tiled.pem`")
    try:
        key = serialization.load_pem_private_key(match.group(0), None)
    except (ValueError, TypeError) as err:
        raise Failure(f"the private key in {source} cannot be read ({err})",
                      "HAProxy needs an unencrypted key (no passphrase)") from None
    leaf = certs[0]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise Failure(f"the private key in {source} does not belong to its first certificate",
                      "put the server certificate first, then its chain, then its key")
    if leaf.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        raise Failure(f"the certificate in {source} expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
                      "renew it, then `make reload-tls`")
    return leaf


def names_of(leaf) -> list[str]:
    from cryptography import x509

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
        [str(n) for n in san.get_values_for_type(x509.IPAddress)]


def generated(values: dict[str, str], tls_dir: Path) -> Path:
    ca_key, ca_cert, server = tls_dir / "ca.key", tls_dir / "ca.pem", tls_dir / "server.pem"
    if ca_cert.exists() and ca_key.exists():
        ok(f"local CA {ca_cert} already exists, kept")
    else:
        step(f"creating a local CA in {tls_dir} (used only because TILED_TLS_CERT is not set)")
        make_ca(ca_key, ca_cert)
    names = wanted_names(values)
    leaf = None
    if server.exists():
        from cryptography import x509

        leaf = x509.load_pem_x509_certificates(server.read_bytes())[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf is not None and leaf.not_valid_after_utc - now > RENEW_WARNING:
        ok(f"server certificate {server} already exists, kept")
        missing = sorted(set(names) - set(names_of(leaf)))
        if missing:
            note(f"it does not cover {', '.join(missing)}: delete {server} and rerun `make up` to issue a new one")
    elif leaf is not None:
        step(f"{server} ends on {leaf.not_valid_after_utc:%Y-%m-%d}: issuing it again from the same CA "
             "(then `make reload-tls` if the stack is running)")
        write_private(server, issue_server(ca_key, ca_cert, names))
    else:
        step(f"issuing a server certificate for {', '.join(names)}")
        write_private(server, issue_server(ca_key, ca_cert, names))
    return server


def ensure(values: dict[str, str], env_path: Path) -> Path | None:
    """With TLS on: the PEM HAProxy serves, in place under tls/served/. Returns the CA to trust, if ours."""
    if mode(values) != "on":
        return None
    tls_dir = folder(env_path)
    given = values.get("TILED_TLS_CERT")
    if given:
        source = Path(given)
        if not source.is_file():
            raise Failure(f"TILED_TLS_CERT={given} is not a file", f"fix the path in {env_path}, or remove the line "
                          "to have `make up` make a certificate")
        try:
            pem = source.read_bytes()
        except PermissionError:
            raise Failure(f"TILED_TLS_CERT={given} cannot be read by this user",
                          "run as a user who can read it, or make a copy this user can read") from None
        ca = None
    else:
        source = generated(values, tls_dir)
        pem = source.read_bytes()
        ca = tls_dir / "ca.pem"
    leaf = checked(pem, str(source))
    left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    if left < RENEW_WARNING:
        note(f"the certificate in {source} expires in {left.days} days: renew it, then `make reload-tls`")
    write_private(tls_dir / SERVED, pem)
    ok(f"HAProxy serves {source}: {', '.join(names_of(leaf)) or leaf.subject.rfc4514_string()}, "
       f"valid until {leaf.not_valid_after_utc:%Y-%m-%d}")
    return ca


def trust_hint(ca: Path | None, url: str) -> None:
    if ca is None:
        return
    note(f"CA to trust: {ca}")
    note(f"  python:    from_uri('{url}', api_key=KEY, verify='{ca}')   (httpx: verify='{ca}')")
    note(f"  curl:      curl --cacert {ca} {url}/api/v1/")
    note(f"  streaming: SSL_CERT_FILE={ca} for tiled.client subscriptions (they ignore verify=)")

