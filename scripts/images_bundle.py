"""Ship the stack's images without a registry: one bundle file, and its checksum manifest.

  save [OUT=file.tar]   build what is missing (`make images`), then write every image the
                        stack runs (compose.yaml's services outside profiles) into one file
                        (`docker save`: layers they share are stored once) and beside it
                        file.tar.json: the file's sha256 and size, each image's tag and ID
  load BUNDLE=file.tar  check the file against its manifest (nothing is loaded if it
                        differs), load it into the engine DOCKER_HOST names (default: this
                        host's), then check that every tag names the image ID of the manifest

Run `load` on every node of a Swarm (DOCKER_HOST=tcp://… or unix://… names another engine).
"""

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts import build_images
from scripts.lib import compose
from scripts.lib.docker_api import client
from scripts.lib.say import Failure, note, ok, run_main, step

CHUNK = 1 << 20


def stack_images() -> list[str]:
    """The images of compose.yaml's always-on services (no profile), each once."""
    return sorted({svc["image"] for svc in compose.services().values() if not svc.get("profiles")})


def manifest_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def save() -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(os.environ.get("OUT") or compose.ROOT / "bundles" / f"tiled-stack-images-{stamp}.tar").resolve()
    build_images.main(set())
    images = stack_images()
    ids = {tag: client().images.get(tag).id for tag in images}
    out.parent.mkdir(parents=True, exist_ok=True)
    step(f"writing {len(images)} images into {out}: {', '.join(images)}")
    started = time.monotonic()
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    saving = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
    with open(partial, "wb") as f:
        for block in iter(lambda: saving.stdout.read(CHUNK), b""):
            f.write(block)
            digest.update(block)
    if saving.wait():
        partial.unlink()
        raise Failure(f"`docker save` failed (exit {saving.returncode})", "read its message above; is the engine up?")
    partial.replace(out)
    manifest = {"created": stamp, "file": out.name, "bytes": out.stat().st_size, "sha256": digest.hexdigest(),
                "images": ids}
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    ok(f"{out} ({out.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.0f}s), "
       f"manifest {manifest_path(out).name}")
    note(f"on every node: make images-load BUNDLE={out}  (the .json beside it goes too)")


def load() -> None:
    raw = os.environ.get("BUNDLE") or (sys.argv[2] if len(sys.argv) > 2 else "")
    if not raw:
        raise Failure("no bundle named", "run `make images-load BUNDLE=path/to/tiled-stack-images-….tar`")
    bundle = Path(raw).resolve()
    if not bundle.is_file():
        raise Failure(f"{bundle} does not exist", "copy the bundle here (`make images-bundle` writes it)")
    if not manifest_path(bundle).is_file():
        raise Failure(f"{manifest_path(bundle)} (the bundle's manifest) is missing",
                      "copy it from where the bundle was made; it is written beside the bundle")
    manifest = json.loads(manifest_path(bundle).read_text())
    step(f"checking {bundle.name} against its manifest ({manifest['bytes'] / 2**20:.0f} MiB)")
    size, found = bundle.stat().st_size, sha256(bundle)
    if size != manifest["bytes"] or found != manifest["sha256"]:
        raise Failure(f"{bundle.name} is not the file its manifest describes ({size} bytes, sha256 {found[:16]}…; "
                      f"the manifest says {manifest['bytes']} bytes, {manifest['sha256'][:16]}…): nothing was loaded",
                      "copy the bundle again (an interrupted copy?), or make a new one with `make images-bundle`")
    engine = client().info()["Name"]
    step(f"loading {len(manifest['images'])} images into the Docker Engine of {engine}")
    started = time.monotonic()
    with open(bundle, "rb") as f:
        for message in client().api.load_image(f):
            if message.get("error"):
                raise Failure(f"the engine refused the bundle: {message['error']}",
                              "is there space for it (`docker system df`)? then rerun")
    wrong = []
    for tag, wanted in manifest["images"].items():
        try:
            have = client().images.get(tag).id
        except Exception:  # noqa: BLE001 (docker.errors.ImageNotFound and its kin)
            have = "missing"
        if have != wanted:
            wrong.append(f"{tag}: {have[:19]} instead of {wanted[:19]}")
    if wrong:
        raise Failure(f"after loading, these tags do not name the bundle's images: {'; '.join(wrong)}",
                      "the bundle is damaged or a tag was re-pointed since; make a new one with `make images-bundle`")
    ok(f"{engine}: {len(manifest['images'])} images loaded and verified in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    run_main({"save": save, "load": load}[sys.argv[1]])
