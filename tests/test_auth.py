"""Fast tier: TILED_AUTH and its variables become a Tiled configuration Tiled accepts, and
an incomplete one is refused by `make up` with what to set."""

import pytest
from tiled.config import Config
from tiled.utils import parse

from conftest import ROOT
from scripts import env_file
from scripts.lib.say import Failure

auth = env_file.auth_module()
BASE = {"TILED_SECRET_KEY": "new", "AUTHN_DB_PASSWORD": "pw", "TILED_SINGLE_USER_API_KEY": "key"}
LDAP = {**BASE, "TILED_AUTH": "ldap", "TILED_LDAP_URI": "ldap://ldap", "TILED_LDAP_STARTTLS": "off",
        "TILED_LDAP_BIND_DN_TEMPLATE": "uid={username},ou=people,dc=facility,dc=test",
        "TILED_LDAP_ALLOWED_GROUPS": "cn=beamline-a,ou=groups,dc=facility,dc=test;cn=staff,ou=groups,dc=facility,dc=test",
        "TILED_ADMINS": "carol"}
OIDC = {**BASE, "TILED_AUTH": "oidc", "TILED_OIDC_WELL_KNOWN_URI": "http://oidc:9400/.well-known/openid-configuration",
        "TILED_OIDC_CLIENT_ID": "tiled", "TILED_OIDC_CLIENT_SECRET": "s3cret"}


def tiled_config(env: dict, monkeypatch) -> Config:
    for key in ("CATALOG_DB_PASSWORD", "STORAGE_DB_PASSWORD", "REDIS_PASSWORD"):
        monkeypatch.setenv(key, "pw")
    return Config.model_validate(auth.configure(parse(ROOT / "tiled" / "config.yml"), env))


def test_single_user_is_the_default_and_keeps_the_one_key(monkeypatch):
    config = tiled_config(BASE, monkeypatch)
    assert auth.mode(BASE) == "single-user" and auth.problems(BASE) == []
    assert not config.authentication.providers and config.database is None
    assert config.authentication.secret_keys == ["new"]


def test_ldap_becomes_tileds_ldap_authenticator_with_the_shared_authn_database(monkeypatch):
    config = tiled_config(LDAP, monkeypatch)
    (provider,) = config.authentication.providers
    assert provider.provider == "ldap"
    assert [(a.provider, a.id) for a in config.authentication.tiled_admins] == [("ldap", "carol")]
    args = auth.ldap_provider(LDAP)["args"]
    assert args["server_address"] == ["ldap:389"] and not args["use_ssl"] and not args["use_tls"]
    assert args["allowed_groups"] == ["cn=beamline-a,ou=groups,dc=facility,dc=test",
                                      "cn=staff,ou=groups,dc=facility,dc=test"]
    assert config.database.uri == "postgresql://tiled_authn:pw@postgres:5432/tiled_authn"
    assert config.database.init_if_not_exists is False  # the init job's, never a replica's
    assert config.trees[0].args["top_level_access_tags"] == ["public", "acquisition"]
    assert type(config.access_policy).__name__ == "TagBasedAccessPolicy" and config.access_policy.provider == "ldap"
    secure = auth.ldap_provider({**LDAP, "TILED_LDAP_URI": "ldaps://a.example ldaps://b.example:1636"})["args"]
    assert secure["server_address"] == ["a.example:636", "b.example:1636"] and secure["use_ssl"]
    assert auth.ldap_provider({**LDAP, "TILED_LDAP_STARTTLS": ""})["args"]["use_tls"]  # StartTLS by default


def test_ldap_lookup_under_a_search_base(monkeypatch):
    env = {**LDAP, "TILED_LDAP_BIND_DN_TEMPLATE": "", "TILED_LDAP_USER_SEARCH_BASE": "ou=people,dc=x"}
    args = auth.ldap_provider(env)["args"]
    assert args["lookup_dn"] and args["user_search_base"] == "ou=people,dc=x" and args["user_attribute"] == "uid"
    tiled_config(env, monkeypatch)


def test_oidc_becomes_tileds_oidc_authenticator(monkeypatch):
    config = tiled_config(OIDC, monkeypatch)
    (provider,) = config.authentication.providers
    assert provider.provider == "oidc"
    args = auth.oidc_provider(OIDC)["args"]
    assert args["audience"] == "tiled" and args["user_id_claim"] == "sub"


def test_a_rotation_signs_with_the_new_key_and_still_verifies_the_old():
    assert auth.secret_keys({**BASE, "TILED_PREVIOUS_SECRET_KEY": "old"}) == ["new", "old"]
    assert auth.secret_keys({**BASE, "TILED_NEXT_SECRET_KEY": "next"}) == ["new", "next"]
    # An empty key would verify tokens anyone can sign: never listed.
    assert auth.secret_keys({**BASE, "TILED_PREVIOUS_SECRET_KEY": "", "TILED_NEXT_SECRET_KEY": ""}) == ["new"]


@pytest.mark.parametrize("env, expected", [
    ({"TILED_AUTH": "kerberos"}, "not one of single-user, ldap, oidc"),
    ({**LDAP, "TILED_LDAP_URI": ""}, "TILED_LDAP_URI is not set"),
    ({**LDAP, "TILED_LDAP_URI": "http://ldap"}, "ldap:// or ldaps://"),
    ({**LDAP, "TILED_LDAP_BIND_DN_TEMPLATE": "uid=x,dc=y"}, "must contain {username}"),
    ({**LDAP, "TILED_LDAP_STARTTLS": "enabled"}, "neither on nor off"),  # never TLS off by a typo
    ({**LDAP, "TILED_LDAP_BIND_DN_TEMPLATE": ""}, "TILED_LDAP_USER_SEARCH_BASE"),
    ({**LDAP, "TILED_ADMINS": "Carol Smith"}, "TILED_ADMINS"),
    ({**OIDC, "TILED_OIDC_CLIENT_SECRET": ""}, "TILED_OIDC_CLIENT_SECRET is not set"),
])
def test_make_up_refuses_incomplete_settings_naming_what_to_set(tmp_path, monkeypatch, env, expected):
    path = tmp_path / ".env"
    monkeypatch.setenv("STACK_ENV_FILE", str(path))
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    with pytest.raises(Failure, match="authentication settings") as refused:
        env_file.ensure()
    assert expected in refused.value.what and ".env.example" in refused.value.next_step


def test_a_backup_blanks_every_secret_given_or_generated(tmp_path, monkeypatch):
    from scripts import backup
    from scripts.lib.compose import Stack

    path = tmp_path / ".env"
    monkeypatch.setenv("STACK_ENV_FILE", str(path))
    given = {key: f"given-{key.lower()}" for key in env_file.GIVEN_SECRETS}
    path.write_text("".join(f"{k}={v}\n" for k, v in {**OIDC, **given}.items()))
    values = env_file.ensure()
    backup.write_config(Stack(values), tmp_path / "config")
    kept = (tmp_path / "config" / "env.without-secrets").read_text()
    for key in env_file.all_secrets():
        assert values[key] not in kept, key
    assert "TILED_OIDC_WELL_KNOWN_URI=http://oidc:9400" in kept  # the rest is kept
