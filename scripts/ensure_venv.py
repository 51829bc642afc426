"""Create or refresh .venv, the pinned Python environment every script runs in.

Standard library only: it runs before the venv exists. Reinstalls only when
requirements/host.txt changed since the last install. Safe to rerun.
"""

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "host.txt"
MARKER = VENV / ".host.txt.sha256"


def main() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"✗ Python {sys.version.split()[0]} is too old\n  → install Python ≥ 3.10 as python3")
    wanted = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if MARKER.exists() and MARKER.read_text() == wanted:
        return
    if not (VENV / "bin" / "python").exists():
        print(f"▶ creating {VENV.name}/ (Python {sys.version.split()[0]})", flush=True)
        try:
            venv.create(VENV, with_pip=True)
        except Exception as err:  # Debian without python3-venv raises CalledProcessError
            sys.exit(f"✗ could not create {VENV}: {err}\n  → install the venv module "
                     "(`sudo apt-get install python3-venv`) and rerun")
    print(f"▶ installing pinned packages from {LOCK.relative_to(ROOT)} into {VENV.name}/ (≈1–2 min, once)",
          flush=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if subprocess.run([*pip, "--requirement", str(LOCK)]).returncode:
        sys.exit("✗ installing the host packages failed\n  → check that this host reaches PyPI "
                 "(or set PIP_INDEX_URL to your mirror) and rerun")
    MARKER.write_text(wanted)
    print(f"✓ {VENV.name}/ ready", flush=True)


if __name__ == "__main__":
    main()
