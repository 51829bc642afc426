"""Who may log in: TILED_AUTH=single-user | ldap | oidc, and the variables of each mode.

This module is the one place that knows them. Each replica and the init job call
`configure()` to turn the environment into Tiled's `authentication:` and `database:`
sections; `make up` calls `problems()` on the .env before anything starts (the host
imports this file; it must not import Tiled at module level).

- single-user: one API key (TILED_SINGLE_USER_API_KEY), as config.yml says.
- ldap: Tiled's LDAPAuthenticator against the facility's directory.
- oidc: Tiled's OIDCAuthenticator against the facility's provider (Keycloak, …).
In both multi-user modes sessions, principals and API keys live in the database
tiled_authn, shared by every replica, and tokens are signed with TILED_SECRET_KEY
(verified with it and TILED_PREVIOUS_SECRET_KEY, during a rotation).
"""

import re
from urllib.parse import urlsplit

MODES = ("single-user", "ldap", "oidc")
AUTHN_DATABASE = "postgresql://tiled_authn:{password}@postgres:5432/tiled_authn"
# In the multi-user modes the provider is named as the mode; the name is part of the
# login URLs (/api/v1/auth/provider/<mode>/…) and of every identity in tiled_authn.
# A directory's login names: what Tiled's LDAPAuthenticator accepts by default.
LDAP_USERNAME = r"^[a-z][.a-z0-9_-]*$"
# Access tags on the root container (tiled_stack/access.py): `public` lets every logged-in
# user list it (each sees only the runs their tags allow), ROOT_WRITERS lets every service
# account create runs in it.
ROOT_WRITERS = "acquisition"
ROOT_TAGS = ["public", ROOT_WRITERS]


def mode(env) -> str:
    return env.get("TILED_AUTH") or "single-user"


def words(value: str | None) -> list[str]:
    return [w for w in re.split(r"[\s,]+", value or "") if w]


def group_dns(value: str | None) -> list[str]:
    """Group DNs contain commas: they are separated by ';'."""
    return [g.strip() for g in (value or "").split(";") if g.strip()]


SWITCH = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}


def on(value: str | None, default: bool) -> bool:
    return SWITCH[value.strip().lower()] if value and value.strip() else default


def problems(env) -> list[str]:
    """What is missing or wrong for the chosen mode, each naming the variable to set."""
    chosen = mode(env)
    if chosen not in MODES:
        return [f"TILED_AUTH={chosen!r} is not one of {', '.join(MODES)}"]
    found = []
    if chosen == "ldap":
        uris = words(env.get("TILED_LDAP_URI"))
        if not uris:
            found.append("TILED_LDAP_URI is not set: the directory's address, e.g. ldaps://ldap.facility.org")
        schemes = {urlsplit(u).scheme for u in uris}
        if uris and (not schemes <= {"ldap", "ldaps"} or len(schemes) > 1):
            found.append(f"TILED_LDAP_URI={env.get('TILED_LDAP_URI')!r}: give ldap:// or ldaps:// URIs, "
                         "all with the same scheme")
        starttls = (env.get("TILED_LDAP_STARTTLS") or "on").strip().lower()
        if starttls not in SWITCH:
            found.append(f"TILED_LDAP_STARTTLS={env.get('TILED_LDAP_STARTTLS')!r} is neither on nor off")
        template = env.get("TILED_LDAP_BIND_DN_TEMPLATE") or ""
        if template and "{username}" not in template:
            found.append("TILED_LDAP_BIND_DN_TEMPLATE must contain {username}, e.g. "
                         "uid={username},ou=people,dc=facility,dc=org")
        if not template and not env.get("TILED_LDAP_USER_SEARCH_BASE"):
            found.append("set TILED_LDAP_BIND_DN_TEMPLATE (users' DNs follow one pattern) or "
                         "TILED_LDAP_USER_SEARCH_BASE (users are looked up under a base)")
    if chosen == "oidc":
        for key, example in (("TILED_OIDC_WELL_KNOWN_URI",
                              "https://sso.facility.org/realms/facility/.well-known/openid-configuration"),
                             ("TILED_OIDC_CLIENT_ID", "the client id registered for Tiled"),
                             ("TILED_OIDC_CLIENT_SECRET", "that client's secret")):
            if not env.get(key):
                found.append(f"{key} is not set: {example}")
    if chosen != "single-user":
        bad = [a for a in words(env.get("TILED_ADMINS")) if chosen == "ldap" and not re.match(LDAP_USERNAME, a)]
        if bad:
            found.append(f"TILED_ADMINS has names a directory login cannot have: {', '.join(bad)}")
    return found


def ldap_provider(env) -> dict:
    uris = [urlsplit(u) for u in words(env["TILED_LDAP_URI"])]
    ssl = uris[0].scheme == "ldaps"
    args = {
        "server_address": [f"{u.hostname}:{u.port or (636 if ssl else 389)}" for u in uris],
        "use_ssl": ssl,
        "use_tls": not ssl and on(env.get("TILED_LDAP_STARTTLS"), True),
        "allowed_groups": group_dns(env.get("TILED_LDAP_ALLOWED_GROUPS")) or None,
    }
    if env.get("TILED_LDAP_BIND_DN_TEMPLATE"):
        args["bind_dn_template"] = env["TILED_LDAP_BIND_DN_TEMPLATE"]
    else:
        attribute = env.get("TILED_LDAP_USER_ATTRIBUTE") or "uid"
        args.update(lookup_dn=True, user_search_base=env["TILED_LDAP_USER_SEARCH_BASE"],
                    user_attribute=attribute, lookup_dn_user_dn_attribute=attribute,
                    lookup_dn_search_user=env.get("TILED_LDAP_SEARCH_USER") or None,
                    lookup_dn_search_password=env.get("TILED_LDAP_SEARCH_PASSWORD") or None)
    return {"provider": "ldap", "authenticator": "tiled.authenticators:LDAPAuthenticator",
            "args": args}


def oidc_provider(env) -> dict:
    args = {
        "well_known_uri": env["TILED_OIDC_WELL_KNOWN_URI"],
        "client_id": env["TILED_OIDC_CLIENT_ID"],
        "client_secret": env["TILED_OIDC_CLIENT_SECRET"],
        "audience": env.get("TILED_OIDC_AUDIENCE") or env["TILED_OIDC_CLIENT_ID"],
        "user_id_claim": env.get("TILED_OIDC_USER_ID_CLAIM") or "sub",
    }
    return {"provider": "oidc", "authenticator": "tiled.authenticators:OIDCAuthenticator",
            "args": args}


def secret_keys(env) -> list[str]:
    """Tiled signs with the first and verifies with each. During a rotation
    (scripts/rotate_secret_key.py) the next key verifies before it signs, and the
    previous one verifies until it is retired. An empty key is never listed: it
    would verify tokens anyone can sign."""
    keys = (env.get("TILED_SECRET_KEY"), env.get("TILED_NEXT_SECRET_KEY"), env.get("TILED_PREVIOUS_SECRET_KEY"))
    return [k for k in keys if k]


def authn_database(env) -> dict:
    return {
        "uri": AUTHN_DATABASE.format(password=env["AUTHN_DB_PASSWORD"]),
        # The init job creates and upgrades it, once; replicas never race to.
        "init_if_not_exists": False,
        "pool_size": int(env.get("TILED_AUTHN_POOL_SIZE") or 2),
        "max_overflow": int(env.get("TILED_AUTHN_MAX_OVERFLOW") or 2),
        "pool_pre_ping": True,
    }


def configure(conf: dict, env) -> dict:
    """Tiled's configuration (as parsed from config.yml) for the mode in `env`."""
    found = problems(env)
    if found:
        raise ValueError("; ".join(found))
    chosen = mode(env)
    authentication = dict(conf.get("authentication") or {})
    authentication["secret_keys"] = secret_keys(env)
    if chosen != "single-user":
        provider = ldap_provider(env) if chosen == "ldap" else oidc_provider(env)
        authentication.pop("single_user_api_key", None)
        authentication["providers"] = [provider]
        authentication["tiled_admins"] = [{"provider": provider["provider"], "id": name}
                                          for name in words(env.get("TILED_ADMINS"))]
        conf["database"] = authn_database(env)
        # Per-group access: tags compiled from /etc/tiled/access/tags.yml (tiled_stack/access.py).
        conf["access_control"] = {
            "access_policy": "tiled.access_control.access_policies:TagBasedAccessPolicy",
            "args": {"provider": provider["provider"],
                     "access_tags_parser": "tiled.access_control.access_tags:AccessTagsParser"},
        }
        # Without tags on the root, Tiled hands users an empty stand-in for it (a POST there is a 500).
        conf["catalog"]["top_level_access_tags"] = ROOT_TAGS
    conf["authentication"] = authentication
    return conf
