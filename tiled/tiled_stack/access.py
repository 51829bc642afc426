"""Per-group access: compile /etc/tiled/access/tags.yml into the catalog's access-tag tables.

Tiled's TagBasedAccessPolicy reads its tags, grants and owners from tables in the catalog
database on every request (no cache: a compile reaches every replica at once), but
nothing in Tiled writes them: this does, with Tiled's AccessTagsCompiler, from the init
job (before any replica starts) and from `make access` / `make service-account` (in a
running replica). Compiles are serialised by the compiler's own PostgreSQL advisory lock.

On top of Tiled's tag format (tags.yml says how to use them):
- `service_accounts:` entries name service accounts (tiled_stack/admin.py); they become
  the principals' UUIDs, the form Tiled names services by. Each also owns the tags it
  writes (it may apply them to the runs it creates), and may create runs at the root.
- Groups resolve to login names through `members:` in the file, else, with
  TILED_AUTH=ldap and TILED_LDAP_GROUP_BASE, through the directory.
"""

import asyncio
import os
import sys
from pathlib import Path

import yaml

from tiled_stack import admin, auth

TAGS_FILE = Path("/etc/tiled/access/tags.yml")
SCOPES = ["read:metadata", "read:data", "write:metadata", "write:data", "create:node", "register",
          "delete:node", "delete:revision"]


def ldap_group_members(env, group: str) -> list[str]:
    """Login names of the members of cn=<group>,<TILED_LDAP_GROUP_BASE> (groupOfNames,
    groupOfUniqueNames or posixGroup); KeyError if there is no such group."""
    import ssl

    import ldap3
    from ldap3.utils.dn import escape_rdn, parse_dn

    provider = auth.ldap_provider(env)["args"]
    # Unlike Tiled's own LDAP login (ldap3's default: no check), the certificate is verified.
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED)
    pool = ldap3.ServerPool([ldap3.Server(address.rsplit(":", 1)[0], port=int(address.rsplit(":", 1)[1]),
                                          use_ssl=provider["use_ssl"], tls=tls, connect_timeout=5)
                             for address in provider["server_address"]], ldap3.FIRST, active=1)
    connection = ldap3.Connection(pool, user=env.get("TILED_LDAP_SEARCH_USER") or None,
                                  password=env.get("TILED_LDAP_SEARCH_PASSWORD") or None, receive_timeout=30,
                                  auto_bind=ldap3.AUTO_BIND_TLS_BEFORE_BIND if provider["use_tls"]
                                  else ldap3.AUTO_BIND_NO_TLS)
    try:
        attribute = env.get("TILED_LDAP_USER_ATTRIBUTE") or "uid"
        found = connection.search(f"cn={escape_rdn(group)},{env['TILED_LDAP_GROUP_BASE']}", "(objectClass=*)",
                                  search_scope=ldap3.BASE, attributes=["member", "uniqueMember", "memberUid"])
        if not found:
            raise KeyError(group)
        entry = connection.entries[0].entry_attributes_as_dict
        names = list(entry.get("memberUid", []))
        for dn in entry.get("member", []) + entry.get("uniqueMember", []):
            name, value, _ = parse_dn(dn)[0]
            if name.lower() == attribute.lower():
                names.append(value)
            else:  # a member named by another attribute than users log in with: cannot be matched
                print(f"  group {group}: member {dn} is not named by {attribute}=, skipped", file=sys.stderr)
        return names
    finally:
        connection.unbind()


def group_parser(env, members: dict):
    def parse(group: str) -> list[str]:
        if group in members:
            return list(members[group])
        if auth.mode(env) == "ldap" and env.get("TILED_LDAP_GROUP_BASE"):
            return ldap_group_members(env, group)
        raise KeyError(group)  # the compiler warns and skips the group
    return parse


async def service_uuids(names: set[str]) -> dict[str, str]:
    """Each named service account's principal UUID (tiled_stack/admin.py made them)."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession
    from tiled.authn_database import orm

    engine = admin.engine()
    try:
        async with AsyncSession(engine) as db:
            rows = (await db.execute(
                select(orm.Identity.id, orm.Principal.uuid).join(orm.Principal)
                .filter(orm.Identity.provider == admin.SERVICE_PROVIDER, orm.Identity.id.in_(names)))).all()
    finally:
        await engine.dispose()
    return {name: str(uuid) for name, uuid in rows}  # as Tiled names a service: with dashes


async def tiled_tag_config(spec: dict) -> tuple[dict, list[str]]:
    """Tiled's tag config from ours, and the service accounts it names that do not exist yet."""
    tags = {name: dict(tag) for name, tag in (spec.get("tags") or {}).items()}
    named = {entry["name"] for tag in tags.values() for entry in tag.get("service_accounts", [])}
    uuids = await service_uuids(named)
    owners = {name: {"users": [{"name": u["name"]} for u in (owner.get("users") or [])],
                     "groups": owner.get("groups") or []}
              for name, owner in (spec.get("tag_owners") or {}).items()}
    writers = []
    for name, tag in tags.items():
        accounts = [entry for entry in tag.pop("service_accounts", []) if entry["name"] in uuids]
        users = [*(tag.get("users") or []), *[{**entry, "name": uuids[entry["name"]]} for entry in accounts]]
        if users:
            tag["users"] = users
        owners.setdefault(name, {"users": [], "groups": []})["users"] += [{"name": uuids[e["name"]]} for e in accounts]
        writers += [uuids[e["name"]] for e in accounts]
    if auth.ROOT_WRITERS in tags:
        raise ValueError(f"the tag {auth.ROOT_WRITERS!r} is the root's own (every service account): rename yours")
    tags[auth.ROOT_WRITERS] = {"users": [{"name": uuid, "scopes": admin.ACQUISITION_ROLE[2]}
                                         for uuid in dict.fromkeys(writers)]}
    return {"roles": spec.get("roles") or {}, "tags": tags, "tag_owners": owners}, sorted(named - set(uuids))


async def compile_tags(env, path: Path = TAGS_FILE) -> str:
    from tiled.access_control.access_tags import AccessTagsCompiler
    from tiled.server.connection_pool import close_database_connection_pool
    from tiled.server.settings import DatabaseSettings
    from tiled.utils import ensure_specified_sql_driver

    spec = yaml.safe_load(path.read_text()) or {}
    config, missing = await tiled_tag_config(spec)
    from tiled_stack.init_catalog import catalog_uri

    catalog = DatabaseSettings(uri=ensure_specified_sql_driver(catalog_uri()))
    authn = DatabaseSettings(uri=ensure_specified_sql_driver(auth.authn_database(env)["uri"]))
    compiler = AccessTagsCompiler(SCOPES, config, catalog, group_parser(env, spec.get("members") or {}),
                                  authn_database_settings=authn, provider=auth.mode(env))
    try:
        compiler.load_tag_config()
        await compiler.load_principal_tags()
        await compiler.compile()
    finally:
        await close_database_connection_pool(catalog)
        await close_database_connection_pool(authn)
    summary = f"{len(config['tags'])} access tags compiled from {path}"
    if missing:
        summary += f"; service accounts not created yet (skipped): {', '.join(missing)}"
    return summary


def main() -> None:
    if auth.mode(os.environ) == "single-user":
        print("single-user mode: no access tags (one key sees everything)")
        return
    try:
        print(asyncio.run(compile_tags(os.environ)), flush=True)
    except Exception as err:  # noqa: BLE001 - one line for the operator, not a traceback
        print(f"compiling {TAGS_FILE} failed ({type(err).__name__}: {err}); the tags compiled before stay in force",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
