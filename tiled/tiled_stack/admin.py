"""Principals and API keys, administered from the host (`make key`, `make keys`,
`make revoke-key`, `make service-account`), run inside a replica with `docker exec`.

It works on the authentication database directly, with Tiled's own tables and the key
format Tiled checks (36 random bytes, in hex; only their SHA-256 is stored): whoever
can run Docker on the host can read the database anyway, and no admin password is
needed to give a beamline its key. Output is one JSON document on stdout; errors go
to stderr with exit status 1.

A service account is a Tiled service principal with an identity of its own
(provider "service", id NAME) so that it has a name, and the role `acquisition`:
what a RunEngine writing through TiledWriter needs, and nothing more.
"""

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import secrets
import sys

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import selectinload
from tiled.authn_database import orm
from tiled.authn_database.core import create_user
from tiled.utils import ensure_specified_sql_driver

from tiled_stack import auth

SERVICE_PROVIDER = "service"
# TiledWriter creates runs and streams, writes their metadata, appends event tables,
# writes arrays and registers detector files (StreamResource) in readable storage.
ACQUISITION_ROLE = ("acquisition", "A beamline's acquisition machine (RunEngine + TiledWriter)",
                    ["read:metadata", "read:data", "create:node", "write:metadata", "write:data", "register"])


class Refused(Exception):
    pass


def engine():
    return create_async_engine(ensure_specified_sql_driver(auth.authn_database(os.environ)["uri"]))


async def role(db, name: str) -> orm.Role:
    found = (await db.execute(select(orm.Role).filter(orm.Role.name == name))).scalar()
    if found is None and name == ACQUISITION_ROLE[0]:
        found = orm.Role(name=name, description=ACQUISITION_ROLE[1], scopes=ACQUISITION_ROLE[2])
        db.add(found)
        await db.commit()
    if found is None:
        raise Refused(f"no role {name!r} in the authentication database")
    return found


async def principal_of(db, provider: str, name: str, create: bool) -> orm.Principal | None:
    identity = (await db.execute(
        select(orm.Identity).filter(orm.Identity.provider == provider, orm.Identity.id == name)
        .options(selectinload(orm.Identity.principal).selectinload(orm.Principal.roles)))).scalar()
    if identity is not None:
        return identity.principal
    if not create:
        return None
    if provider == SERVICE_PROVIDER:
        principal = orm.Principal(type="service", roles=[await role(db, ACQUISITION_ROLE[0])])
        db.add(principal)
        await db.commit()
        db.add(orm.Identity(provider=provider, id=name, principal_id=principal.id))
        await db.commit()
    else:
        # A user who has not logged in yet: the principal their first login will find.
        await create_user(db, provider, name)
    return await principal_of(db, provider, name, create=False)


async def mint(db, principal: orm.Principal, scopes: list[str] | None, expires_in: int | None,
               note: str) -> dict:
    allowed = set().union(*[r.scopes for r in principal.roles])
    scopes = scopes or sorted(allowed)
    if not set(scopes) <= allowed:
        raise Refused(f"scopes {sorted(set(scopes) - allowed)} are not among this principal's: {sorted(allowed)}")
    secret = secrets.token_bytes(4 + 32)  # as Tiled makes them: it stores the first eight hex digits
    expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in)
               if expires_in else None)
    db.add(orm.APIKey(principal_id=principal.id, expiration_time=expires, note=note, scopes=scopes,
                      first_eight=secret.hex()[:8], hashed_secret=hashlib.sha256(secret).digest()))
    await db.commit()
    return {"api_key": secret.hex(), "first_eight": secret.hex()[:8], "principal": principal.uuid.hex,
            "scopes": scopes, "expires": expires.isoformat() if expires else None, "note": note}


def describe(key: orm.APIKey) -> dict:
    names = [f"{i.provider}:{i.id}" for i in key.principal.identities] or [key.principal.uuid.hex]
    return {"first_eight": key.first_eight, "principal": ", ".join(names), "scopes": key.scopes,
            "expires": key.expiration_time.isoformat() if key.expiration_time else None,
            "latest_activity": key.latest_activity.isoformat() if key.latest_activity else None,
            "note": key.note}


async def run(args) -> dict | list:
    from sqlalchemy.ext.asyncio import AsyncSession

    db_engine = engine()
    try:
        async with AsyncSession(db_engine, expire_on_commit=False) as db:
            if args.command == "service-account":
                new = await principal_of(db, SERVICE_PROVIDER, args.name, create=False) is None
                principal = await principal_of(db, SERVICE_PROVIDER, args.name, create=True)
                made = await mint(db, principal, args.scopes, args.expires_in, f"service account {args.name}")
                return {**made, "new_principal": new}
            if args.command == "key":
                provider = SERVICE_PROVIDER if args.service else auth.mode(os.environ)
                if provider == "single-user":
                    raise Refused("TILED_AUTH=single-user has no users: set TILED_AUTH=ldap or oidc")
                new = await principal_of(db, provider, args.user, create=False) is None
                principal = await principal_of(db, provider, args.user, create=not args.service)
                if principal is None:
                    raise Refused(f"no service account {args.user!r}: `make service-account NAME={args.user}`")
                made = await mint(db, principal, args.scopes, args.expires_in, args.note or f"for {args.user}")
                return {**made, "new_principal": new}
            if args.command == "keys":
                query = select(orm.APIKey).options(
                    selectinload(orm.APIKey.principal).selectinload(orm.Principal.identities))
                keys = (await db.execute(query.order_by(orm.APIKey.time_created))).scalars().all()
                return [describe(k) for k in keys
                        if not args.user or any(i.id == args.user for i in k.principal.identities)]
            if args.command == "revoke":
                keys = (await db.execute(select(orm.APIKey).filter(orm.APIKey.first_eight == args.first_eight))
                        ).scalars().unique().all()  # APIKey eager-loads its principal's collections
                if not keys:
                    raise Refused(f"no API key begins with {args.first_eight!r} (`make keys` lists them)")
                if len(keys) > 1:
                    raise Refused(f"{len(keys)} API keys begin with {args.first_eight!r}: none revoked; revoke "
                                  "through Tiled's API with the whole key (DELETE /api/v1/auth/apikey as its owner)")
                await db.delete(keys[0])
                await db.commit()
                return {"revoked": args.first_eight}
    finally:
        await db_engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="tiled_stack.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("service-account", "key"):
        command = sub.add_parser(name)
        command.add_argument("--scopes", type=lambda s: s.replace(",", " ").split() or None)
        command.add_argument("--expires-in", type=int)
        if name == "service-account":
            command.add_argument("name")
        else:
            command.add_argument("user")
            command.add_argument("--service", action="store_true")
            command.add_argument("--note")
    sub.add_parser("keys").add_argument("--user")
    sub.add_parser("revoke").add_argument("first_eight")
    args = parser.parse_args()
    try:
        print(json.dumps(asyncio.run(run(args)), indent=2))
    except Refused as err:
        print(str(err), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
