"""Fast tier: the Swarm stack file derived from compose.yaml (scripts/lib/swarm.py), no Docker.

What `docker stack deploy` receives is checked on a real Swarm by tests/test_swarm_live.py;
here, that the derivation keeps secrets out of it and gives each service its Swarm keys.
"""

import hashlib
import json

import pytest
import yaml

from conftest import ROOT
from scripts import env_file
from scripts.lib import swarm, tls
from scripts.lib.compose import Stack
from scripts.lib.say import Failure


@pytest.fixture
def derived(env_path, tmp_path, monkeypatch):
    """The stack file and its secrets and configs, images 'resolved' to made-up IDs."""
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    env_path.write_text(f"COMPOSE_PROJECT_NAME=site\nTILED_ARRAYS_PATH={arrays}\nTILED_REPLICAS=4\n")
    values = env_file.ensure()
    monkeypatch.setattr(swarm, "image_id", lambda tag: "sha256:" + hashlib.sha256(tag.encode()).hexdigest())
    stack = Stack(values)
    document, secrets, configs = swarm.stack_file(stack, swarm.render(stack))
    return values, document, secrets, configs, swarm.write(stack, document), arrays


def test_no_secret_value_in_the_stack_file_and_each_becomes_a_docker_secret(derived):
    values, document, secrets, _, path, _ = derived
    text = path.read_text()
    wanted = {values[k] for k in env_file.all_secrets() if values.get(k)}
    assert not [v for v in wanted if v in text]
    # Every secret a Swarm service reads (the monitoring logins' only serve the monitoring profile).
    assert {s.decode() for s in secrets.values()} == wanted - {values["MONITORING_DB_PASSWORD"]}
    assert all(name.startswith("site_") and len(name.rsplit("_", 1)[1]) == 12 for name in secrets)
    # The variable a service read before is now a file of that name under /run/secrets.
    targets = {r["target"] for r in document["services"]["tiled"]["secrets"]}
    assert {"CATALOG_DB_PASSWORD", "REDIS_PASSWORD", "TILED_SECRET_KEY"} <= targets
    # One reference per secret (two to one secret make Docker's CLI restart the service at random).
    for name, service in document["services"].items():
        sources = [r["source"] for r in service.get("secrets", [])]
        assert len(sources) == len(set(sources)), name
    assert not set(document["services"]["tiled"]["environment"]) & targets


def test_a_changed_secret_gets_a_new_name_and_an_unchanged_one_keeps_its_own(derived, env_path, monkeypatch):
    values, _, secrets, _, _, _ = derived
    changed = env_path.read_text().replace(values["REDIS_PASSWORD"], "f" * 64)
    env_path.write_text(changed)
    stack = Stack(env_file.parse(changed))
    _, again, _ = swarm.stack_file(stack, swarm.render(stack))
    assert set(again) ^ set(secrets) == {n for n in set(again) ^ set(secrets) if "redis_password" in n}
    assert len(set(again) - set(secrets)) == 1


def test_each_service_has_its_swarm_keys_and_nothing_swarm_ignores(derived):
    _, document, _, configs, _, arrays = derived
    assert document["version"] == "3.9"
    services = document["services"]
    assert set(services) == {"haproxy", "tiled", "tiled-init", "postgres", "redis"}  # no profile's services
    for name, service in services.items():
        assert service["image"].startswith("sha256:"), name  # by ID: no node asks a registry
        assert not {"build", "depends_on", "restart", "mem_limit", "profiles"} & set(service), name
        assert service["deploy"]["endpoint_mode"] == "dnsrr"
        assert service["deploy"]["resources"]["limits"]["memory"].endswith("M")
    tiled = services["tiled"]
    assert tiled["deploy"]["replicas"] == 4
    assert tiled["deploy"]["update_config"]["order"] == "start-first"
    assert {"type": "bind", "source": str(arrays), "target": "/data/arrays"}.items() <= tiled["volumes"][0].items()
    assert [c["target"] for c in tiled["configs"]] == ["/etc/tiled/access/tags.yml"]
    assert configs[tiled["configs"][0]["source"]] == (ROOT / "tiled" / "access" / "tags.yml").read_bytes()
    for db in ("postgres", "redis"):
        assert services[db]["deploy"]["placement"]["constraints"] == ["node.labels.tiled-stack.db == true"]
    haproxy = services["haproxy"]
    assert haproxy["deploy"]["mode"] == "global"
    assert haproxy["environment"]["TILED_BACKEND_HOST"] == "tasks.tiled"
    assert {p["mode"] for p in haproxy["ports"]} == {"host"}
    assert [m for m in services["postgres"]["volumes"] if m["target"] == "/dev/shm"][0]["type"] == "tmpfs"
    assert document["networks"]["backend"] == {"driver": "overlay", "internal": True}
    assert yaml.safe_load(json.dumps(document)) == document


def test_a_stage_holds_only_what_its_services_name(derived):
    _, document, _, _, _, _ = derived
    databases = swarm.subset(document, ("postgres", "redis"))
    assert set(databases["services"]) == {"postgres", "redis"}
    assert set(databases["volumes"]) == {"postgres", "redis"}
    assert not databases["configs"]
    assert all("redis_password" in n or "postgres" in n or "db_password" in n for n in databases["secrets"])


def test_without_the_shared_array_folder_or_tls_it_says_what_to_set(env_path):
    env_path.write_text("COMPOSE_PROJECT_NAME=site\n")
    stack = Stack(env_file.ensure())
    with pytest.raises(Failure, match="TILED_ARRAYS_PATH"):
        swarm.render(stack)
    with pytest.raises(Failure, match="in clear text") as refused:  # TILED_TLS=off: the port is on the network
        swarm.check_tls(stack)
    assert "TILED_TLS=on" in refused.value.next_step and "TILED_TLS_NAMES" in refused.value.next_step
    swarm.check_tls(Stack({**stack.values, "TILED_TLS": "external"}))


def test_with_tls_on_the_certificate_is_a_docker_secret_for_haproxy_alone(env_path, tmp_path, monkeypatch):
    env_path.write_text(f"COMPOSE_PROJECT_NAME=site\nTILED_ARRAYS_PATH={tmp_path}\nTILED_TLS=on\n"
                        "TILED_TLS_NAMES=10.1.2.3,tiled.facility.org\n")
    values = env_file.ensure()
    tls.ensure(values, env_path)
    monkeypatch.setattr(swarm, "image_id", lambda tag: "sha256:" + hashlib.sha256(tag.encode()).hexdigest())
    stack = Stack(values)
    swarm.check_tls(stack)
    document, secrets, _ = swarm.stack_file(stack, swarm.render(stack))
    haproxy = document["services"]["haproxy"]
    (ref,) = [r for r in haproxy["secrets"] if r["target"] == "tiled.pem"]
    assert b"PRIVATE KEY" in secrets[ref["source"]] and ref["mode"] == 0o400
    assert "volumes" not in haproxy  # no folder of the manager's bound into a task on another node
    assert "PRIVATE KEY" not in swarm.write(stack, document).read_text()
    assert not [r for s in ("tiled", "postgres", "redis") for r in document["services"][s].get("secrets", [])
                if r["source"] == ref["source"]]
    assert sorted(p["published"] for p in haproxy["ports"]) == [8000, 8080, 8404]  # 8080: redirect to https
    # The stats port is on the network too: its login is a secret of HAProxy's.
    assert "HAPROXY_STATS_PASSWORD" in {r["target"] for r in haproxy["secrets"]}


def test_an_operator_secret_with_dollars_becomes_a_secret_and_a_profile_stays_out(env_path, tmp_path, monkeypatch):
    env_path.write_text(f"COMPOSE_PROJECT_NAME=a-facility-with-a-long-project-name\nTILED_ARRAYS_PATH={tmp_path}\n"
                        "TILED_AUTH=ldap\nTILED_LDAP_URI=ldap://ldap.facility.org\nTILED_LDAP_BIND_DN_TEMPLATE=uid={username},ou=people\n"
                        "TILED_LDAP_SEARCH_PASSWORD='pa$$word$1'\nCOMPOSE_PROFILES=idp,monitoring\n")
    values = env_file.ensure()
    monkeypatch.setattr(swarm, "image_id", lambda tag: "sha256:" + hashlib.sha256(tag.encode()).hexdigest())
    stack = Stack(values)
    document, secrets, _ = swarm.stack_file(stack, swarm.render(stack))
    assert set(document["services"]) == {"haproxy", "tiled", "tiled-init", "postgres", "redis"}
    assert "pa$$word$1".encode() in secrets.values()
    text = swarm.write(stack, document).read_text()
    assert "pa$" not in text
    assert all(len(name) <= 64 for name in secrets)  # Swarm's limit on a secret's name


def test_a_mount_inside_the_checkout_or_a_secret_inside_a_setting_is_refused(env_path, monkeypatch):
    monkeypatch.setattr(swarm, "image_id", lambda tag: "sha256:" + "0" * 64)
    env_path.write_text(f"COMPOSE_PROJECT_NAME=site\nTILED_ARRAYS_PATH={ROOT / 'data' / 'arrays'}\n")
    stack = Stack(env_file.ensure())
    with pytest.raises(Failure, match="inside this checkout"):
        swarm.stack_file(stack, swarm.render(stack))
    values = env_file.parse(env_path.read_text())
    env_path.write_text(env_path.read_text().replace(str(ROOT / "data"), "/gpfs")
                        + f"TILED_LDAP_URI=ldap://reader:{values['REDIS_PASSWORD']}@ldap\n")
    stack = Stack()
    document, _, _ = swarm.stack_file(stack, swarm.render(stack))
    with pytest.raises(Failure, match="REDIS_PASSWORD in clear text"):
        swarm.write(stack, document)
