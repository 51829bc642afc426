"""Live tier: the README's examples and `make demo` work against the stack as written."""

import re

import pytest

from conftest import ROOT, make

pytestmark = pytest.mark.live


def readme_example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- tested: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no example marked 'tested: {name}'"
    return match.group(1)


def run_example(name, stack, api_key) -> dict:
    code = readme_example(name).replace("http://localhost:8000", stack.local_url)
    namespace = {"KEY": api_key, "__name__": f"readme_{name}"}
    exec(compile(code, f"README.md:{name}", "exec"), namespace)
    return namespace


def test_readme_bluesky_example(stack, api_key, tiled):
    namespace = run_example("bluesky", stack, api_key)
    run = tiled[namespace["uid"]]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert len(run["primary"].read()["det"]) == 11


def test_readme_streaming_example(stack, api_key):
    namespace = run_example("streaming", stack, api_key)
    assert namespace["received"] == [[1, 2]]


def test_make_demo_prints_the_runs(stack):
    output = make("demo", stack.env_path).stdout
    assert re.search(r"✓ run [0-9a-f-]{36}\s+plan=scan\s+streams: primary", output), output
    assert re.search(r"✓ run [0-9a-f-]{36}\s+plan=count\s+streams: primary", output), output
    assert f"{stack.url}/api/v1/metadata/" in output
