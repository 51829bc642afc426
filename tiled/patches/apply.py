"""Apply the upstream-fix series to the installed packages, or fail with the patch's name.

Run in the Tiled image's build stage: `python3 apply.py SITE_PACKAGES`, and by
scripts/ensure_venv.py on the host's venv. `--without NAME` leaves one patch out, for a
benchmark of what that fix costs or gains (make bench-single, make bench-switches);
`--none` applies nothing (the unpatched image the comparisons run against). In a
`--without` variant, a patch after the one left out may land at an offset (never with fuzz). Each patch named
in `series` (in order) must apply exactly where it was made: GNU patch with no fuzz, and
any hunk that lands at an offset is refused too, as is a patch that changes no file, so a
bumped Tiled whose code moved or changed fails `make images` here instead of serving a
stale fix.
"""

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def series() -> list[Path]:
    names = [line.split("#")[0].strip() for line in (HERE / "series").read_text().splitlines()]
    return [HERE / name for name in names if name]


def patch(site_packages: str, path: Path, *extra: str, offset_allowed: bool = False) -> str:
    done = subprocess.run(["patch", "-p1", "--fuzz=0", "--forward", "--batch", "--no-backup-if-mismatch",
                           "-d", site_packages, "-i", str(path), *extra], capture_output=True, text=True)
    output = done.stdout + done.stderr
    files = len(re.findall(r"^\+\+\+ ", path.read_text(), re.MULTILINE))
    touched = len(re.findall(r"^(checking|patching) file ", output, re.MULTILINE))
    refused = r"\b(offset|fuzz)\b" if not offset_allowed else r"\bfuzz\b"
    if done.returncode or files == 0 or touched != files or re.search(refused, output, re.IGNORECASE):
        sys.exit(f"tiled-stack: patch {path.name} does not apply exactly to the pinned packages:\n{output}"
                 f"Refresh it against the new source (or drop it if upstream fixed it), then `make images`.")
    return output


def main() -> None:
    site_packages, *rest = sys.argv[1:] or [None]
    if rest == ["--none"]:
        print("tiled-stack: no upstream fixes applied (--none: the packages as released)", flush=True)
        return
    left_out = set(rest[1::2]) if rest[0::2] == ["--without"] * (len(rest) // 2) and len(rest) % 2 == 0 else None
    if site_packages is None or left_out is None or not left_out <= {p.name for p in series()}:
        sys.exit(f"usage: apply.py SITE_PACKAGES [--none | --without PATCH...] (PATCH a name in {HERE / 'series'})")
    patches = [p for p in series() if p.name not in left_out]
    for path in patches:
        # With a patch left out, a later one that edits the same file finds its lines moved by
        # what the missing one would have added: an offset, accepted in such a variant only
        # (it exists to be measured); the whole series is always applied exactly.
        moved = bool(left_out) and any(p.name in left_out for p in series()[:series().index(path)])
        patch(site_packages, path, "--dry-run", offset_allowed=moved)  # all or nothing per patch
        output = patch(site_packages, path, offset_allowed=moved)
        print(f"tiled-stack: applied {path.name}" + (" (at an offset)" if "offset" in output else ""), flush=True)
    print(f"tiled-stack: {len(patches)} upstream fixes applied", flush=True)


if __name__ == "__main__":
    main()
