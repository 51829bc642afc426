"""promtool, Prometheus's checker, on this host for the fast tier: taken from the same
Debian package the monitoring image installs (`apt-get download`, unpacked into .venv/promtool,
nothing installed system-wide). Fetched once, on first use."""

import functools
import glob
import subprocess
import tempfile
from pathlib import Path

from scripts.lib.compose import ROOT
from scripts.lib.say import Failure, ok, step

HOME = ROOT / ".venv" / "promtool"
BINARY = HOME / "usr" / "bin" / "promtool"
VERSION = "2.42."  # the monitoring image's (Debian 12's) Prometheus


def version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split()[2] if done.returncode == 0 else ""


@functools.cache
def ensure() -> Path:
    if BINARY.exists() and version(BINARY).startswith(VERSION):
        return BINARY
    step("fetching promtool from Debian's prometheus package into .venv/promtool (once, ≈ 30 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        fetch = ["apt-get", "download", "-q", "prometheus"]
        done = subprocess.run(fetch, cwd=tmp, capture_output=True, text=True)
        if done.returncode:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            done = subprocess.run(fetch, cwd=tmp, capture_output=True, text=True)
        if done.returncode:
            raise Failure(f"`apt-get download prometheus` failed: {done.stderr.strip()[-300:]}",
                          "this needs Debian's package mirror (Debian 12, as the images use); "
                          "or put promtool 2.42 at .venv/promtool/usr/bin/promtool")
        (deb,) = glob.glob(f"{tmp}/prometheus_*.deb")
        subprocess.run(["dpkg-deb", "-x", deb, str(HOME)], check=True)
    found = version(BINARY)
    if not found.startswith(VERSION):
        raise Failure(f"promtool {found or '(none)'} was unpacked; the monitoring image runs {VERSION}x",
                      "run the fast tier on Debian 12 (bookworm), as the images are")
    ok(f"promtool {found} in {BINARY.parent.relative_to(ROOT)}")
    return BINARY
