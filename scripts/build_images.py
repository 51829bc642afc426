"""Build every image the stack runs, here, with no container registry needed.

1. Each base image the builds name (BASE_IMAGE, tiled-stack/base:<suite>: bookworm
   for the stack, trixie for the test identity provider): the pinned official Debian
   image if a registry answers, else a Debian rootfs made with debootstrap from
   Debian's package mirror and loaded with `docker import`.
2. Python wheels for each image with a requirements.txt (Tiled, the OIDC mock):
   installed from PyPI inside the build if a build container can reach it, else
   downloaded here on the host (which may sit behind a proxy the containers cannot
   use) into <context>/.build/wheels, for the Python of that image's Debian suite.
3. Each service with a `build:` in compose.yaml, skipped when an image built
   from the same context and base already exists; and, from the Tiled image's
   same build stage, tiled-stack/tiled:<version>-unpatched (no upstream fix
   applied), which the identity test and the benchmarks compare against.
   `make up` builds only the services it starts (none of a profile it was not given).

Safe to rerun: every step says when it has nothing to do.
"""

import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker.errors
import yaml

from scripts.lib import timings
from scripts.lib.docker_api import client
from scripts.env_file import ROOT
from scripts.lib.say import Failure, note, ok, run_main, step

# Debian, pinned by suite (and by point release for the official image). A base image is
# tiled-stack/base:<suite>. Wheels fetched on the host are for the suite's python3, the
# interpreter every image built on that base runs.
DEBIAN_SUITES = {
    "bookworm": {"official_image": "debian:12.12-slim", "python": ("3.11", "cp311")},
    # The OIDC mock (oidc/) needs Python >= 3.12.
    "trixie": {"official_image": "debian:13.8-slim", "python": ("3.13", "cp313")},
}
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY_MIRROR = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
CONTEXT_LABEL = "org.tiled-stack.context-sha256"
BUILD_STAGE_LABEL = "org.tiled-stack.stage=tiled-build"  # set in tiled/Dockerfile's build stage


def compose_builds() -> dict[str, dict]:
    """Each service's build (image, context, args with BASE_IMAGE, profiles), from compose.yaml."""
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    builds = {
        name: {"image": svc["image"], "context": ROOT / svc["build"]["context"],
               "args": dict(svc["build"].get("args", {})), "profiles": list(svc.get("profiles", []))}
        for name, svc in spec["services"].items() if "build" in svc
    }
    for name, build in builds.items():
        if "BASE_IMAGE" not in build["args"]:
            raise Failure(f"compose.yaml builds {name} without a BASE_IMAGE build arg",
                          "give its build `args: {BASE_IMAGE: *base-image}` (or *base-image-trixie)")
    return builds


def suite(base: str) -> str:
    """The Debian suite of a base image name, tiled-stack/base:<suite>."""
    name = base.rpartition(":")[2]
    if name not in DEBIAN_SUITES:
        raise Failure(f"no Debian suite is known for the base image {base}",
                      f"name one of {', '.join(f'tiled-stack/base:{s}' for s in DEBIAN_SUITES)} in compose.yaml, "
                      "or add the suite to DEBIAN_SUITES in scripts/build_images.py")
    return name


def image_exists(name: str):
    try:
        return client().images.get(name)
    except docker.errors.ImageNotFound:
        return None


def ensure_base(base: str) -> None:
    if image_exists(base):
        ok(f"base image {base} already exists, skipped")
        return
    official = DEBIAN_SUITES[suite(base)]["official_image"]
    step(f"pulling {official} for the base image {base}")
    pulled = subprocess.run(["docker", "pull", "-q", official], capture_output=True, text=True)
    if pulled.returncode == 0:
        client().images.get(official).tag(base)
        ok(f"base image {base} = {official} (registry path)")
        return
    note(f"no registry: {pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else 'pull failed'}")
    debootstrap_base(base, suite(base))


def debootstrap_base(base: str, debian_suite: str) -> None:
    if shutil.which("debootstrap") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            step("installing debootstrap from Debian's packages")
            subprocess.run(["apt-get", "install", "-y", "-q", "debootstrap"], check=True,
                           stdout=subprocess.DEVNULL)
        else:
            raise Failure("no registry can be reached and debootstrap is not installed",
                          "install debootstrap (`sudo apt-get install debootstrap`), or load a Debian "
                          f"image as {base} (`docker load`), then rerun `make images`")
    if os.geteuid() != 0:
        raise Failure("building the base image with debootstrap needs root",
                      "run `sudo make images` once; later commands need no root")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiled-stack-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        step(f"building the base image from Debian's packages: debootstrap {debian_suite} (≈1 min)")
        done = subprocess.run(["debootstrap", "--variant=minbase", debian_suite, str(rootfs), DEBIAN_MIRROR],
                              capture_output=True, text=True)
        if done.returncode:
            raise Failure(f"debootstrap failed: {done.stdout.strip().splitlines()[-1:]}",
                          f"check that {DEBIAN_MIRROR} is reachable (set DEBIAN_MIRROR to a local mirror)")
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} {debian_suite} main\n"
            f"deb {DEBIAN_MIRROR} {debian_suite}-updates main\n"
            f"deb {DEBIAN_SECURITY_MIRROR} {debian_suite}-security main\n")
        # Same trims as the official image: no apt caches, no docs.
        (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
            'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
            'Binary::apt::APT::Keep-Downloaded-Packages "false";\n')
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
            (rootfs / junk).mkdir(parents=True)
        step(f"importing the rootfs as {base}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", 'CMD ["bash"]', "--change", "ENV LANG=C.UTF-8",
             "--message", f"debootstrap --variant=minbase {debian_suite} {DEBIAN_MIRROR}", "-", base],
            stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if imported.returncode:
            raise Failure(f"docker import failed: {imported.stderr.strip()}", "check `docker info` and free disk space")
    ok(f"base image {base} built from Debian's packages in {time.monotonic() - started:.0f}s (no-registry path)")


def context_digest(context: Path, args: dict, base_id: str) -> str:
    digest = hashlib.sha256(json.dumps([args, base_id], sort_keys=True).encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file() and ".build" not in p.parts
                       and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(context)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build(image: str, context: Path, args: dict, labels: dict, target: str | None = None) -> None:
    step(f"building {image}{f' (stage {target})' if target else ''} from {context.relative_to(ROOT)}/")
    started = time.monotonic()
    stream = client().api.build(path=str(context), tag=image, buildargs=args, labels=labels,
                                target=target, rm=True, forcerm=True, decode=True)
    tail = []
    for chunk in stream:
        if "error" in chunk:
            refused = next((line for line in tail if "tiled-stack: patch " in line), None)
            raise Failure(f"building {image} failed: {chunk['error'].strip()}\n    " + "\n    ".join(tail[-15:]),
                          "refresh the patch named above against the pinned source (or drop it if upstream "
                          "fixed it), then rerun `make images`" if refused else
                          f"fix {context.relative_to(ROOT)}/Dockerfile or the network, then rerun `make images`")
        line = (chunk.get("stream") or "").rstrip()
        if line:
            tail.append(line)
            if line.startswith("Step "):
                note(line)
    ok(f"{image} built in {time.monotonic() - started:.0f}s")


def remove_superseded_images() -> None:
    """Remove the untagged images earlier builds left behind: our images a rebuild replaced
    (≈ 1.2 GB each for Tiled) and build stages except the newest (it is the build cache).
    One still used by a container (a stack not yet restarted) is left for the next run."""
    stages = sorted(client().images.list(filters={"dangling": True, "label": BUILD_STAGE_LABEL}),
                    key=lambda image: image.attrs["Created"], reverse=True)
    replaced = client().images.list(filters={"dangling": True, "label": CONTEXT_LABEL})
    removed = 0
    for image in stages[1:] + replaced:
        try:
            client().images.remove(image.id)
            removed += 1
        except docker.errors.APIError:  # in use by a container
            pass
    if removed:
        ok(f"removed {removed} image(s) that earlier builds left behind")


def pypi_reachable_from_builds(base: str, context: Path) -> bool:
    """Can a container (not just this host) install from PyPI with its own CA store?
    Built from the context's own `python` stage, on its own base."""
    probe_image = f"tiled-stack/{context.name}-python-probe:latest"
    build(probe_image, context, {"BASE_IMAGE": base}, {}, target="python")
    code = ("import urllib.request as u; u.urlopen('https://pypi.org/simple/pip/', timeout=10)")
    try:
        client().containers.run(probe_image, ["python3", "-c", code], remove=True)
        return True
    except docker.errors.ContainerError:
        return False


def wheels_dir(context: Path) -> Path:
    """Where the host puts the wheels of a context's requirements.txt (its Dockerfile copies it)."""
    return context / ".build" / "wheels"


def pip_target(python: tuple[str, str]) -> list[str]:
    """pip options that choose wheels for an image's Python (version, ABI tag) on Linux x86_64,
    whatever this host runs."""
    # pip does not widen an explicit manylinux platform to older glibc tags: list them.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return ["--only-binary=:all:", "--python-version", python[0], "--implementation", "cp", "--abi", python[1],
            *[arg for p in platforms for arg in ("--platform", p)]]


def ensure_wheels(requirements: Path, python: tuple[str, str]) -> None:
    """Download every pinned wheel for the image's Python (version, ABI tag) on the host (Linux x86_64)."""
    wheels = wheels_dir(requirements.parent)
    marker = wheels / ".requirements.sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text() == wanted:
        ok(f"wheels for {requirements.relative_to(ROOT)} already downloaded, skipped")
        return
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    step(f"downloading wheels on the host for {requirements.relative_to(ROOT)} (python {python[0]})")
    cmd = [str(ROOT / ".venv/bin/pip"), "download", "--quiet", "--no-deps", *pip_target(python),
           "--dest", str(wheels), "--requirement", str(requirements)]
    if subprocess.run(cmd).returncode:
        raise Failure("downloading wheels failed", "check that this host reaches PyPI (or set PIP_INDEX_URL "
                      "to your mirror), then rerun `make images`")
    marker.write_text(wanted)
    ok(f"{len(list(wheels.glob('*.whl')))} wheels in {wheels.relative_to(ROOT)}")


@functools.cache
def pip_flags(base: str, context: Path) -> str:
    """PIP_INSTALL_FLAGS for an image with a requirements.txt: the index if build containers
    reach it, else wheels fetched on the host."""
    if pypi_reachable_from_builds(base, context):
        ok("build containers reach PyPI: installing wheels from the index")
        return ""
    note("build containers cannot reach PyPI: fetching wheels on the host instead")
    ensure_wheels(context / "requirements.txt", DEBIAN_SUITES[suite(base)]["python"])
    return "--no-index"


def ensure_image(image: str, context: Path, args: dict, base: str, base_id: str) -> bool:
    """Build `image` unless one from the same context, args and base exists; True if built."""
    digest = context_digest(context, args, base_id)
    existing = image_exists(image)
    if existing and existing.labels.get(CONTEXT_LABEL) == digest:
        ok(f"{image} is up to date, skipped")
        return False
    if "PIP_INSTALL_FLAGS" in args:  # an image with wheels: decided when it is built, not part of its identity
        args = {**args, "PIP_INSTALL_FLAGS": pip_flags(base, context)}
    build(image, context, args, {CONTEXT_LABEL: digest})
    return True


def variant(spec: dict, suffix: str, apply_args: str) -> tuple[str, dict]:
    """A Tiled variant's tag (<image>-<suffix>) and build args: the same stage, with APPLY_ARGS."""
    return f"{spec['image']}-{suffix}", {**spec["args"], "APPLY_ARGS": apply_args, "PIP_INSTALL_FLAGS": ""}


def tiled_variant(suffix: str, apply_args: str) -> str:
    """The Tiled image built with APPLY_ARGS (e.g. "--none", "--without NAME"), built only if
    missing or stale. Returns its tag."""
    spec = compose_builds()["tiled"]
    image, args = variant(spec, suffix, apply_args)
    base = spec["args"]["BASE_IMAGE"]
    ensure_image(image, spec["context"], args, base, client().images.get(base).id)
    return image


# The comparison image `make images` builds next to the Tiled image: (tag suffix, APPLY_ARGS).
UNPATCHED = ("unpatched", "--none")


@functools.cache
def base_image_id(base: str) -> str:
    ensure_base(base)
    return client().images.get(base).id


def build_lane(builds: dict[str, dict]) -> list[str]:
    """Build these services' images one after another (and the unpatched Tiled image after
    Tiled's); return the images built."""
    built = []
    for service, spec in builds.items():
        base = spec["args"]["BASE_IMAGE"]
        args = dict(spec["args"])
        if (spec["context"] / "requirements.txt").exists():
            # The Dockerfile copies .build/wheels/ on both paths, so it must exist, if empty.
            wheels_dir(spec["context"]).mkdir(parents=True, exist_ok=True)
            args["PIP_INSTALL_FLAGS"] = ""
        if ensure_image(spec["image"], spec["context"], args, base, base_image_id(base)):
            built.append(spec["image"])
        if service == "tiled":
            image, args = variant(spec, *UNPATCHED)
            if ensure_image(image, spec["context"], args, base, base_image_id(base)):
                built.append(image)
    return built


def main(profiles: set[str] | None = None) -> None:
    """Build every image compose.yaml builds (`make images`); given the active profiles
    (`make up`), only those of the services `up` starts: none with another profile.

    Two lanes at once: the Tiled images (mostly pip and compiling), and the others (mostly
    Debian's packages), which fit in the time of the first. From no images: 466 s, against 636 s one
    after another without the monitoring image (2026-12-07)."""
    started = time.monotonic()
    builds = {service: spec for service, spec in compose_builds().items()
              if profiles is None or not spec["profiles"] or profiles & set(spec["profiles"])}
    for base in sorted({spec["args"]["BASE_IMAGE"] for spec in builds.values()}):
        base_image_id(base)  # before the lanes: both may need the same base
    lanes = [{s: spec for s, spec in builds.items() if s == "tiled"},
             {s: spec for s, spec in builds.items() if s != "tiled"}]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        built = [image for lane in pool.map(build_lane, [lane for lane in lanes if lane]) for image in lane]
    if built:
        remove_superseded_images()
        timings.record("images", time.monotonic() - started, built=built)
    seconds = time.monotonic() - started
    ok(f"images ready in {seconds:.0f}s")

if __name__ == "__main__":
    run_main(main)
