"""Create or refresh .venv, the pinned Python environment every script runs in.

Standard library only: it runs before the venv exists. Installs only when
requirements/host.txt changed since the last install, and reapplies the upstream
fixes only when they changed. Safe to rerun, and to interrupt.

The upstream-fix series (tiled/patches) is applied to the venv's Tiled and
strawberry too, exactly as in the image, because `make serve` and the embedded
mode (examples/embedded.py) run this Tiled. The released packages are kept
unpatched in .venv/upstream/ (checked against pip's RECORD hashes): the series is
reapplied from them when it changes, and the tests compare against them.
"""

import base64
import hashlib
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "host.txt"
PATCHES = ROOT / "tiled" / "patches"
UPSTREAM = VENV / "upstream"  # the patched packages as released, unpatched
PATCHED = {"tiled": "tiled", "strawberry": "strawberry-graphql"}  # import name -> distribution
MARKER = VENV / ".host.txt.sha256"
PATCH_MARKER = VENV / ".patches.sha256"


def fail(what: str, next_step: str) -> None:
    sys.exit(f"✗ {what}\n  → {next_step}")


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def series_digest() -> str:
    names = [line.split("#")[0].strip() for line in (PATCHES / "series").read_text().splitlines()]
    return digest(PATCHES / "series", PATCHES / "apply.py", *(PATCHES / name for name in names if name))


def site_packages() -> Path:
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def as_released(root: Path, name: str, site: Path) -> bool:
    """Whether root/name holds exactly the files pip installed, by the hashes in its RECORD."""
    (info,) = site.glob(f"{PATCHED[name].replace('-', '_')}-*.dist-info")
    for line in (info / "RECORD").read_text().splitlines():
        path, hashed, _ = line.rsplit(",", 2)
        if not path.startswith(f"{name}/") or "__pycache__" in path or not hashed:
            continue
        algorithm, expected = hashed.split("=", 1)
        if not (root / path).is_file():
            return False
        data = (root / path).read_bytes()
        actual = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=").decode()
        if actual != expected:
            return False
    return True


def pins() -> list[str]:
    found = [line.split()[0] for line in LOCK.read_text().splitlines()
             if any(line.startswith(f"{dist}==") for dist in PATCHED.values())]
    if len(found) != len(PATCHED):
        fail(f"{LOCK.relative_to(ROOT)} does not pin tiled and strawberry-graphql", "run `make lock`")
    return found


def install(pip: list[str]) -> None:
    PATCH_MARKER.unlink(missing_ok=True)  # whatever pip leaves must be patched again
    print(f"▶ installing pinned packages from {LOCK.relative_to(ROOT)} into {VENV.name}/ (≈1–2 min, once)",
          flush=True)
    if subprocess.run([*pip, "--requirement", str(LOCK)]).returncode:
        fail("installing the host packages failed",
             "check that this host reaches PyPI (or set PIP_INDEX_URL to your mirror) and rerun")
    site = site_packages()
    if not all(as_released(site, name, site) for name in PATCHED):  # patched by an earlier run: pip kept it
        if subprocess.run([*pip, "--no-deps", "--force-reinstall", *pins()]).returncode:
            fail("reinstalling the released Tiled failed", "check that this host reaches PyPI and rerun")
    building = VENV / "upstream.tmp"
    shutil.rmtree(building, ignore_errors=True)
    for name in PATCHED:
        shutil.copytree(site / name, building / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(UPSTREAM, ignore_errors=True)
    building.rename(UPSTREAM)  # whole or absent
    MARKER.write_text(digest(LOCK))


def apply_series() -> None:
    if not shutil.which("patch"):
        fail("the upstream fixes need GNU patch on this host", "`sudo apt-get install patch`, then rerun")
    PATCH_MARKER.unlink(missing_ok=True)  # until the series is wholly applied
    site = site_packages()
    for name in PATCHED:  # start from the release, whatever an earlier series (or a Ctrl-C) left
        shutil.rmtree(site / name, ignore_errors=True)
        shutil.copytree(UPSTREAM / name, site / name)
    print(f"▶ applying the upstream fixes ({PATCHES.relative_to(ROOT)}/series) to {VENV.name}/", flush=True)
    done = subprocess.run([str(VENV / "bin" / "python"), str(PATCHES / "apply.py"), str(site)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        fail("a patch of the series does not apply to the pinned Tiled (named above)",
             "refresh that patch against the pinned source, or drop it if upstream fixed it")
    PATCH_MARKER.write_text(series_digest())
    print(f"✓ {done.stdout.strip().splitlines()[-1].removeprefix('tiled-stack: ')}", flush=True)


def main() -> None:
    if sys.version_info < (3, 10):
        fail(f"Python {sys.version.split()[0]} is too old", "install Python ≥ 3.10 as python3")
    host_current = MARKER.exists() and MARKER.read_text() == digest(LOCK) and UPSTREAM.is_dir()
    patches_current = PATCH_MARKER.exists() and PATCH_MARKER.read_text() == series_digest()
    if host_current and patches_current:
        return
    if not (VENV / "bin" / "python").exists():
        print(f"▶ creating {VENV.name}/ (Python {sys.version.split()[0]})", flush=True)
        try:
            venv.create(VENV, with_pip=True)
        except Exception as err:  # Debian without python3-venv raises CalledProcessError
            fail(f"could not create {VENV}: {err}", "install the venv module (`sudo apt-get install python3-venv`) "
                 "and rerun")
    if not host_current:
        install([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
    apply_series()
    print(f"✓ {VENV.name}/ ready", flush=True)


if __name__ == "__main__":
    main()
