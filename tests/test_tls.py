"""Fast tier: the certificate `make up` makes or checks, and the secure-by-default rule."""

import datetime
import socket
import stat

import pytest
from cryptography import x509

from scripts.lib import tls
from scripts.lib.compose import Stack
from scripts.lib.say import Failure


def values(**extra) -> dict[str, str]:
    return {"TILED_TLS": "on", **extra}


def test_plain_http_is_refused_on_a_network_address_unless_tls_ends_in_front(tmp_path):
    env = tmp_path / ".env"
    for bind in ("0.0.0.0", "192.0.2.10", "::", "tiled.example.org"):
        with pytest.raises(Failure, match=f"TILED_BIND_ADDRESS={bind} serves the network") as refused:
            tls.check_exposure({"TILED_BIND_ADDRESS": bind}, env)
        assert "TILED_TLS=on" in refused.value.next_step and "TILED_TLS=external" in refused.value.next_step
    for bind in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        tls.check_exposure({"TILED_BIND_ADDRESS": bind}, env)
    tls.check_exposure({"TILED_BIND_ADDRESS": "0.0.0.0", "TILED_TLS": "on"}, env)
    tls.check_exposure({"TILED_BIND_ADDRESS": "0.0.0.0", "TILED_TLS": "external"}, env)
    with pytest.raises(Failure, match="must be one of off, on, external"):
        tls.check_exposure({"TILED_TLS": "yes"}, env)


def test_a_certificate_is_made_once_for_the_hosts_names_and_kept(tmp_path):
    env = tmp_path / ".env"
    ca = tls.ensure(values(TILED_TLS_NAMES="tiled.beamline.example, 10.1.2.3"), env)
    folder = tmp_path / "tls"
    assert ca == folder / "ca.pem"
    files = ("ca.pem", "ca.key", "server.pem", "served/tiled.pem")
    for name in files:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    leaf = tls.checked((folder / "server.pem").read_bytes(), "server.pem")
    assert set(tls.names_of(leaf)) >= {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1",
                                       "tiled.beamline.example", "10.1.2.3"}
    issuer = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    leaf.verify_directly_issued_by(issuer)
    assert (folder / "served/tiled.pem").read_bytes() == (folder / "server.pem").read_bytes()
    before = {name: (folder / name).read_bytes() for name in files}
    tls.ensure(values(TILED_TLS_NAMES="tiled.beamline.example, 10.1.2.3"), env)
    assert {name: (folder / name).read_bytes() for name in files} == before, "never rewritten"


def test_a_facility_certificate_is_checked_and_served(tmp_path, capsys):
    env = tmp_path / ".env"
    tls.ensure(values(), env)  # a CA to sign with
    folder = tmp_path / "tls"
    pem = tls.issue_server(folder / "ca.key", folder / "ca.pem", ["tiled.facility.example"])
    given = tmp_path / "facility.pem"
    given.write_bytes(pem)
    assert tls.ensure(values(TILED_TLS_CERT=str(given)), env) is None, "not our CA: nothing to print"
    assert (folder / "served/tiled.pem").read_bytes() == pem
    assert "tiled.facility.example" in capsys.readouterr().out
    stack = Stack({"TILED_TLS": "on", "TILED_TLS_CERT": str(given), "TILED_PORT": "443"}, env)
    assert stack.url == "https://localhost:443" and stack.verify is True and stack.http_port == 8080
    assert Stack({"TILED_TLS": "on", "TILED_HTTP_PORT": "off"}, env).http_port is None


def test_a_bad_certificate_file_gets_a_message_that_says_what_to_do(tmp_path):
    env = tmp_path / ".env"
    tls.ensure(values(), env)
    folder = tmp_path / "tls"
    pem = (folder / "server.pem").read_bytes()
    chain, key = pem[:pem.index(b"-----BEGIN PRIVATE KEY")], pem[pem.index(b"-----BEGIN PRIVATE KEY"):]
    other_key = tls.issue_server(folder / "ca.key", folder / "ca.pem", ["x"])
    other_key = other_key[other_key.index(b"-----BEGIN PRIVATE KEY"):]
    expired = tls.issue_server(folder / "ca.key", folder / "ca.pem", ["x"], days=0)
    cases = {"missing.pem": (None, "is not a file"),
             "chain-only.pem": (chain, "holds no private key"),
             "key-only.pem": (key, "holds no PEM certificate"),
             "wrong-key.pem": (chain + other_key, "does not belong to its first certificate"),
             "expired.pem": (expired, "expired on")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(Failure, match=message):
            tls.ensure(values(TILED_TLS_CERT=str(path)), env)
    assert (folder / "served/tiled.pem").read_bytes() == pem, "a refused certificate replaces nothing"


def test_a_certificate_near_its_end_is_served_with_a_warning(tmp_path, capsys):
    env = tmp_path / ".env"
    tls.ensure(values(), env)
    folder = tmp_path / "tls"
    soon = tmp_path / "soon.pem"
    soon.write_bytes(tls.issue_server(folder / "ca.key", folder / "ca.pem", ["x"], days=5))
    tls.ensure(values(TILED_TLS_CERT=str(soon)), env)
    out = capsys.readouterr().out
    assert "expires in 4 days" in out or "expires in 5 days" in out
    leaf = tls.checked(soon.read_bytes(), "soon")
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) < tls.RENEW_WARNING


def test_a_generated_certificate_near_its_end_is_issued_again_from_the_same_ca(tmp_path):
    env = tmp_path / ".env"
    tls.ensure(values(), env)
    folder = tmp_path / "tls"
    ca_before = (folder / "ca.pem").read_bytes()
    tls.write_private(folder / "server.pem", tls.issue_server(folder / "ca.key", folder / "ca.pem",
                                                              ["localhost"], days=10))
    tls.ensure(values(), env)
    leaf = tls.checked((folder / "server.pem").read_bytes(), "server.pem")
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=800)
    assert (folder / "ca.pem").read_bytes() == ca_before, "the CA clients trust is kept"
    assert (folder / "served/tiled.pem").read_bytes() == (folder / "server.pem").read_bytes()
