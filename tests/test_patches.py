"""Fast tier: the upstream-fix series (tiled/patches) applies exactly, refuses to apply
anywhere else, and each fix is active.

The series is applied, as the image's build stage does, to a copy of the unpatched
tiled and strawberry that `make venv` keeps in .venv/upstream/ (the same pinned versions
as the image). One request per fix is sent in-process to Tiled's app (SQLite catalog)
built from the patched copy and from the unpatched packages: the unpatched app answers
each with a 500 (so the request reaches the bug), the patched one with the status in
EXPECTED. The DuckDB pool (0017) is checked on the storage object itself.
"""

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, SQLITE_APP
from benchmarks.patches import cpu_fixes
from scripts import ensure_venv

PATCHES = ROOT / "tiled" / "patches"
SITE = ROOT / ".venv" / "upstream"  # the releases, unpatched (scripts/ensure_venv.py)

# Request name → status with the fix (every one of them is a 500 without it).
EXPECTED = {
    "0001 non-ASCII api_key": 401,
    "0002 api_key with a control character": 401,
    "0002 api_key outside Latin-1": 401,
    "0003 PUT array without Content-Type": 415,
    "0004 zarr v3 chunk key not integers": 400,
    "0005 non-Latin-1 filename": 200,
    "0006 PATCH shape=scalar": 415,
    "0007 JSON patch of a missing key": 422,
    "0008 data source structure not a dict": 422,
    "0009 revision number past int64": 422,
    "0009 asset id past int64": 422,
    "0010 expected_shape mismatch": 422,
    "0011 csrf_token in the query": 422,
    "0013 slice past the end": 400,
    "0014 format with a bad parameter": 406,
    "0015 filter without its value": 400,
    "0016 array node without a data source": 422,
}
# This host's Python quotes a control character in a cookie; the image's (Debian's 3.11,
# with the CVE-2024-7592 era fixes to http.cookies) raises CookieError, which the fuzz found
# as a 500. Here the fix is checked by its result alone: 401 and no api-key cookie.
UPSTREAM_500_ONLY_IN_THE_IMAGE = {"0002 api_key with a control character"}

PROBE = SQLITE_APP + r"""
import json, sys
sys.path.insert(0, sys.argv[1])  # the patched copy, or the unpatched one
import numpy as np
import tiled
from starlette.testclient import TestClient
from tiled.client import Context, from_context
app = sqlite_app()
key = {"Authorization": "Apikey k"}
out = {"tiled": tiled.__file__}
with Context.from_app(app, api_key="k") as context:
    from_context(context).write_array(np.arange(64, dtype="float64").reshape(8, 8), key="arr")
with TestClient(app, raise_server_exceptions=False) as c:
    requests = {
        "0001 non-ASCII api_key": ("GET", "/api/v1/metadata/?api_key=%C3%A5", {}),
        "0002 api_key with a control character": ("GET", "/api/v1/metadata/?api_key=%01", {}),
        "0002 api_key outside Latin-1": ("GET", "/api/v1/metadata/?api_key=%F0%9F%98%80", {}),
        "0003 PUT array without Content-Type": ("PUT", "/api/v1/array/full/arr", {"headers": key}),
        "0004 zarr v3 chunk key not integers": ("GET", "/zarr/v3/arr/c/x", {"headers": key}),
        "0005 non-Latin-1 filename": ("GET", "/api/v1/array/full/arr?format=application/json&filename=%E2%82%AC.json",
                                      {"headers": key}),
        "0006 PATCH shape=scalar": ("PATCH", "/api/v1/array/full/arr?offset=0&shape=scalar", {"headers": key}),
        "0007 JSON patch of a missing key": ("PATCH", "/api/v1/metadata/arr", {"headers": key, "json": {
            "content-type": "application/json-patch+json", "specs": None,
            "metadata": [{"op": "remove", "path": "/nope"}]}}),
        "0008 data source structure not a dict": ("PUT", "/api/v1/data_source/arr", {"headers": key, "json": {
            "data_source": {"structure_family": "array", "structure": [1], "mimetype": None, "parameters": {},
                            "assets": [], "management": "writable"}}}),
        "0009 revision number past int64": ("DELETE", "/api/v1/revisions/arr?number=99999999999999999999",
                                            {"headers": key}),
        "0009 asset id past int64": ("GET", "/api/v1/asset/bytes/arr?id=99999999999999999999", {"headers": key}),
        "0010 expected_shape mismatch": ("GET", "/api/v1/array/full/arr?expected_shape=3", {"headers": key}),
        "0011 csrf_token in the query": ("POST", "/api/v1/metadata/?csrf=t", {
            "cookies": {"tiled_api_key": "k", "tiled_csrf": "t"}, "json": {"structure_family": "nonsense"}}),
        "0013 slice past the end": ("GET", "/api/v1/array/full/arr?slice=100", {"headers": key}),
        "0014 format with a bad parameter": ("GET", "/api/v1/array/full/arr?format=text/csv;x", {"headers": key}),
        "0015 filter without its value": ("GET", "/api/v1/search/?filter[eq][condition][key]=a", {"headers": key}),
        "0016 array node without a data source": ("POST", "/api/v1/metadata/", {"headers": key, "json": {
            "structure_family": "array", "metadata": {}, "specs": [], "data_sources": []}}),
    }
    for name, (method, url, kwargs) in requests.items():
        c.cookies.clear()  # only the cookies a request names
        for cookie, value in kwargs.pop("cookies", {}).items():
            c.cookies.set(cookie, value)
        r = c.request(method, url, **kwargs)
        out[name] = [r.status_code, r.headers.get("content-disposition", ""), r.headers.get("set-cookie", "")]
    c.cookies.clear()
    c.cookies.set("tiled_api_key", "k")
    r = c.post("/api/v1/metadata/", json={})
    out["0011 csrf refusal"] = [r.status_code, r.headers.get("content-type", ""), r.text]
    c.cookies.clear()
    r = c.post("/api/graphql", headers={**key, "Content-Type": "text/plain"}, content=b"x")
    out["0012 graphql error"] = [r.status_code, r.headers.get("content-type", ""), r.text]
print(json.dumps(out))
"""


def apply(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PATCHES / "apply.py"), str(site)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site-packages")
    for package in SITE.iterdir():  # the packages the series patches, as released
        shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    done = apply(site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(series())} upstream fixes applied" in done.stdout
    return site


def series() -> list[str]:
    return [path.name for path in ensure_venv.series()]


# 0017: two connections borrowed at once from a DuckDB storage must be two connections.
POOL_PROBE = r"""
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
import tiled
from tiled.storage import parse_storage
storage = parse_storage(f"duckdb:///{tempfile.mkdtemp()}/storage.duckdb")
a, b = storage.connect(), storage.connect()
print(json.dumps({"tiled": tiled.__file__, "pool": type(storage._connection_pool).__name__,
                  "shared": a.dbapi_connection is b.dbapi_connection}))
"""


def probe(path: str, code: str = PROBE) -> dict:
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_patch_is_in_the_series_with_its_header():
    names = series()
    assert sorted(p.name for p in PATCHES.glob("*.patch")) == sorted(names)
    for name in names:
        head = (PATCHES / name).read_text().split("\n--- a/")[0]
        fields = [line.split(":")[0] for line in head.splitlines() if line and not line.startswith(" ")]
        # DEP-3, as Debian's quilt series (docs/upstream-fixes/README.md)
        assert {"Description", "Origin", "Forwarded", "Last-Update"} <= set(fields), f"{name}: DEP-3 header {fields}"
        assert "Fixes:" in head, f"{name}: say what it fixes"


def test_a_patch_that_does_not_apply_exactly_stops_the_build(patched, tmp_path):
    # The series again on the patched copy: every hunk is already there.
    done = apply(patched)
    assert done.returncode != 0 and series()[0] in done.stderr
    # One line added above the code the first patch changes: an offset, which GNU patch
    # would accept silently, is refused with the patch's name.
    site = tmp_path / "site-packages"
    shutil.copytree(SITE / "tiled", site / "tiled", ignore=shutil.ignore_patterns("__pycache__"))
    moved = site / "tiled/server/authentication.py"
    moved.write_text("# moved\n" + moved.read_text())
    done = apply(site)
    assert done.returncode != 0 and series()[0] in done.stderr and "offset" in done.stderr
    assert "compare_digest(api_key.encode()" not in moved.read_text(), "a refused patch must change nothing"


@pytest.mark.parametrize("left_out", cpu_fixes())
def test_each_variant_make_bench_switches_builds_applies(left_out, tmp_path):
    """The series without one CPU fix (the image `make bench-switches` builds for it) applies:
    later patches may land at an offset there, never with fuzz."""
    site = tmp_path / "site-packages"
    shutil.copytree(SITE, site, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, str(PATCHES / "apply.py"), str(site), "--without", left_out],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(series()) - 1} upstream fixes applied" in done.stdout


def test_the_host_venv_is_patched_and_keeps_the_releases(patched):
    """`make serve` and the embedded mode run the venv's Tiled: the whole series is applied there too."""
    assert (SITE / "tiled" / "storage.py").exists(), "no .venv/upstream/: run `make venv`"
    installed = Path(subprocess.run([sys.executable, "-c", "import tiled; print(tiled.__file__)"],
                                    capture_output=True, text=True, check=True).stdout.strip()).parent.parent
    touched = {path for name in series() for path in re.findall(r"^\+\+\+ b/(\S+)", (PATCHES / name).read_text(),
                                                                re.MULTILINE)}
    assert len(touched) >= len(series()) // 2
    for path in sorted(touched):
        assert (installed / path).read_text() == (patched / path).read_text(), f"{path}: not as the series makes it"
        assert (SITE / path).read_text() != (patched / path).read_text(), f"{path}: .venv/upstream is patched"
    assert probe("/nonexistent", POOL_PROBE)["pool"] == "QueuePool"


def both(code: str, patched: Path) -> tuple[dict, dict]:
    """`code` in the releases and in the patched copy, at once."""
    with ThreadPoolExecutor(2) as pool:
        before, after = pool.submit(probe, str(SITE), code), pool.submit(probe, str(patched), code)
        return before.result(), after.result()


def test_duckdb_storage_lends_each_borrower_its_own_connection(patched):
    before, after = both(POOL_PROBE, patched)
    assert before["tiled"].startswith(str(SITE)) and after["tiled"].startswith(str(patched))
    assert before == {**before, "pool": "StaticPool", "shared": True}, before
    assert after == {**after, "pool": "QueuePool", "shared": False}, after


def test_each_fix_is_active(patched):
    before, after = both(PROBE, patched)
    assert after["tiled"].startswith(str(patched)) and before["tiled"].startswith(str(SITE))
    for name, status in EXPECTED.items():
        if name not in UPSTREAM_500_ONLY_IN_THE_IMAGE:
            assert before[name][0] == 500, f"{name}: upstream answers {before[name][0]}: the request misses the bug"
        assert after[name][0] == status, f"{name}: {after[name]}"
    for name in ("0002 api_key with a control character", "0002 api_key outside Latin-1"):
        assert "tiled_api_key" not in after[name][2], after[name]
    assert "filename*=UTF-8''%E2%82%AC.json" in after["0005 non-Latin-1 filename"][1]
    # Client errors are JSON: the CSRF refusal (0011) and strawberry's HTTP errors (0012).
    for name in ("0011 csrf refusal", "0012 graphql error"):
        assert before[name][1] != "application/json", before[name]
        assert after[name][0] == before[name][0] and after[name][1] == "application/json", after[name]
        assert "detail" in json.loads(after[name][2])
