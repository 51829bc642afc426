"""Fast tier: the configuration is consistent before anything starts."""

import json
import re
import stat

import pytest
import yaml

from conftest import ROOT
from scripts import env_file
from scripts.lib.compose import Stack, readable_paths
from scripts.lib.say import Failure


def test_first_run_creates_env_with_every_secret_private(env_path):
    values = env_file.ensure()
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    for key in env_file.secret_keys():
        assert re.fullmatch(r"[0-9a-f]{64}", values[key]), key
    assert len({values[k] for k in env_file.secret_keys()}) == len(env_file.secret_keys())


def test_rerun_leaves_env_byte_identical(env_path):
    env_file.ensure()
    before = env_path.read_bytes()
    env_file.ensure()
    assert env_path.read_bytes() == before


def test_only_missing_secrets_are_generated(env_path):
    env_path.write_text("# mine\nTILED_SINGLE_USER_API_KEY=keepme\nREDIS_PASSWORD=\nTILED_PORT=9000\n")
    values = env_file.ensure()
    assert values["TILED_SINGLE_USER_API_KEY"] == "keepme"
    assert values["TILED_PORT"] == "9000"
    assert len(values["REDIS_PASSWORD"]) == 64
    assert env_path.read_text().startswith("# mine\nTILED_SINGLE_USER_API_KEY=keepme\n")


def test_bad_values_are_refused_with_what_to_do(env_path):
    env_path.write_text("POSTGRES_PASSWORD=p@ss:word\n")
    with pytest.raises(Failure, match="POSTGRES_PASSWORD.*database URL"):
        env_file.ensure()
    env_path.write_text("TILED_REPLICAS=9\nTILED_MAX_REPLICAS=8\n")
    with pytest.raises(Failure, match="TILED_REPLICAS=9 is outside"):
        env_file.ensure()


def test_missing_env_file_is_a_clear_error(env_path):
    with pytest.raises(Failure, match="does not exist") as err:
        Stack()
    assert "make up" in err.value.next_step


def test_example_documents_every_variable_compose_reads():
    used = {v for f in ("compose.yaml", "compose.swarm.yaml") for v in re.findall(r"\$\{([A-Z_]+)", (ROOT / f).read_text())}
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?([A-Z_]+)=", example, re.M))
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"
    assert all(v == "" for k, v in env_file.parse(example).items() if k in env_file.secret_keys())


def test_readable_storage_paths_are_split_and_checked(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert readable_paths({"TILED_READABLE_STORAGE": f"{a}:{b}"}) == [str(a), str(b)]
    assert readable_paths({"TILED_READABLE_STORAGE": f"{a}, {b}"}) == [str(a), str(b)]
    assert readable_paths({}) == []
    with pytest.raises(Failure, match="not an absolute path"):
        readable_paths({"TILED_READABLE_STORAGE": "relative/dir"})
    with pytest.raises(Failure, match="not a directory"):
        readable_paths({"TILED_READABLE_STORAGE": str(tmp_path / "missing")})


def test_compose_config_resolves_with_only_haproxy_published(env_path, tmp_path):
    detectors = tmp_path / "det"
    detectors.mkdir()
    env_path.write_text(f"TILED_READABLE_STORAGE={detectors}\nTILED_REPLICAS=5\n")
    stack = Stack(env_file.ensure())
    done = stack.run("config", capture=True)
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == {"haproxy", "tiled", "tiled-init", "postgres", "redis"}
    assert services["tiled"]["deploy"]["replicas"] == 5  # what a plain `docker compose up -d` starts
    assert [name for name, s in services.items() if s.get("ports")] == ["haproxy"]
    assert "container_name" not in services["tiled"]
    tiled = services["tiled"]
    assert json.loads(tiled["environment"]["TILED_CATALOG_READABLE_STORAGE"]) == [str(detectors)]
    mount = next(m for m in tiled["volumes"] if m["target"] == str(detectors))  # Compose v2: mappings
    assert mount["source"] == str(detectors) and mount["read_only"] is True
    deps = tiled["depends_on"]
    assert deps["tiled-init"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        if name != "tiled-init":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_secrets_are_in_no_command_or_healthcheck(env_path):
    values = env_file.ensure()
    config = Stack(values).run("config", capture=True).stdout
    spec = yaml.safe_load(config)
    for name, service in spec["services"].items():
        text = json.dumps([service.get("command"), service.get("entrypoint"), service.get("healthcheck")])
        for key in env_file.secret_keys():
            assert values[key] not in text, f"{key} appears in {name}'s command or healthcheck"


def test_image_tag_matches_the_pinned_tiled():
    pinned = re.search(r"^tiled==(\S+)$", (ROOT / "tiled/requirements.txt").read_text(), re.M).group(1)
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert spec["services"]["tiled"]["image"] == f"tiled-stack/tiled:{pinned}"
    assert spec["services"]["tiled-init"]["image"] == f"tiled-stack/tiled:{pinned}"
    assert f"tiled[server]=={pinned}" in (ROOT / "tiled/requirements.in").read_text()


@pytest.mark.live  # check_port_free asks Docker first whether the port is the stack's own
def test_a_taken_port_is_refused_before_compose_runs(env_path):
    import socket

    from scripts.up import check_port_free

    stack = Stack(env_file.ensure())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(Failure, match=f"port {port} on 127.0.0.1 is already taken") as err:
            check_port_free(stack, "127.0.0.1", port, "TILED_PORT")
    assert "set TILED_PORT" in err.value.next_step
