"""``dbapi-server``: serve the DB-API, and the trusted side's key and token tools."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["main"]


@click.group()
def main() -> None:
    """The DB-API server of dbsession (database access isolation for SQLAlchemy)."""


@main.command()
@click.option("--database-url", envvar="DBAPI_DATABASE_URL", required=True,
              help="The real database (only the server holds it).")
@click.option("--metadata", envvar="DBAPI_METADATA", required=True,
              help="Import path of the application's tables, e.g. myapp.models:Base.metadata.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9180, show_default=True, type=click.IntRange(0, 65535),
              help="0 binds a free port (printed, and written to --port-file).")
@click.option("--port-file", type=click.Path(dir_okay=False),
              help="Write the bound port to this file once the server listens (for --port 0).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1),
              help="Threads of the one serving process (transactions live in its memory).")
@click.option("--server", "server_name", envvar="DBAPI_SERVER", default="granian", show_default=True,
              type=click.Choice(["granian", "waitress"]),
              help="The WSGI server: granian (fastest measured) or waitress (pure Python).")
@click.option("--methods", envvar="DBAPI_METHODS", default="",
              help="Comma-separated modules defining named methods, e.g. myapp.methods.")
@click.option("--policy", "policy_file", envvar="DBAPI_POLICY_FILE", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Per-role policy file (TOML, see docs/security.md); default: the open preset.")
@click.option("--engine-option", "engine_option", multiple=True, metavar="NAME=VALUE",
              help="A create_engine() argument of the served database, e.g. pool_size=20 (repeatable; "
                   "the value is JSON if it parses, else a string). Also DBAPI_ENGINE_OPTIONS (JSON).")
@click.option("--connect-arg", "connect_arg", multiple=True, metavar="NAME=VALUE",
              help="A connect argument of the database driver, e.g. connect_timeout=5 (repeatable). "
                   "Also DBAPI_CONNECT_ARGS (JSON).")
@click.option("--sqlite-pragma", "sqlite_pragma", multiple=True, metavar="NAME=VALUE",
              help="PRAGMA NAME=VALUE on every SQLite connection, e.g. journal_mode=WAL (repeatable). "
                   "Also DBAPI_SQLITE_PRAGMAS (JSON).")
@click.option("--pg-option", "pg_option", multiple=True, metavar="NAME=VALUE",
              help="A PostgreSQL run-time parameter of every connection, e.g. statement_timeout=5s "
                   "(repeatable; sent as the connection's options). Also DBAPI_PG_OPTIONS (JSON).")
def serve(database_url: str, metadata: str, host: str, port: int, port_file: str | None, threads: int,
          server_name: str, methods: str, policy_file: str | None, engine_option: tuple[str, ...],
          connect_arg: tuple[str, ...], sqlite_pragma: tuple[str, ...], pg_option: tuple[str, ...]) -> None:
    """Serve the DB-API under a production WSGI server (granian by default) until SIGINT or SIGTERM."""
    from ._test_hooks import SERVE_PID
    from .app import ConfigError, create_app
    from .engine_options import EngineOptions, EngineOptionsError, parse_assignment
    from .logs import configure_logging
    from .serving import serve as run

    try:
        configure_logging()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        options = EngineOptions(*(dict(parse_assignment(a) for a in given)
                                  for given in (engine_option, connect_arg, sqlite_pragma, pg_option)))
    except EngineOptionsError as exc:
        raise click.ClickException(str(exc)) from None
    sys.path.insert(0, os.getcwd())
    os.environ[SERVE_PID] = str(os.getpid())  # this instance's process (its workers inherit it)
    factory = functools.partial(create_app, database_url, metadata, policy=policy_file,
                                methods=methods.split(","), engine_options=options)
    try:
        app = factory()  # a wrong setting fails here, with a clear message, before serving
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    grace = app.extensions["dbapi_server"].shutdown_grace
    if server_name == "granian":
        # the worker process builds its own and closes it when it stops: it must not inherit this
        # one's database connections or transaction reaper thread
        app.extensions["dbapi_server"].close()
        try:
            run(_LoggingFactory(factory), host=host, port=port, threads=threads, server="granian",
                port_file=port_file, grace=grace)
        except OSError as exc:  # the port is taken
            raise click.ClickException(str(exc)) from None
        return
    try:
        run(lambda: app, host=host, port=port, threads=threads, server="waitress", port_file=port_file,
            grace=grace)
    except OSError as exc:
        raise click.ClickException(f"Cannot serve on {host}:{port}: {exc}") from None
    finally:
        # open transactions are rolled back and pooled connections closed, not left to the database
        app.extensions["dbapi_server"].close()


@dataclasses.dataclass(frozen=True)
class _LoggingFactory:
    """Builds the application in granian's worker, after setting up the DB-API's logging there
    (granian configures the worker's logging before it loads the application)."""

    factory: Callable[[], Any]

    def __call__(self) -> Any:
        from .logs import configure_logging

        configure_logging()
        return self.factory()


@main.command()
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False))
@click.option("--name", default="dbapi", show_default=True)
@click.option("--type", "key_type", default="ed25519", show_default=True, type=click.Choice(["ed25519", "rsa"]),
              help="ed25519 signs EdDSA tokens, rsa (3072 bit) RS256 tokens.")
@click.option("--jwks", "jwks_file", type=click.Path(dir_okay=False),
              help="Also add the public key to this JWKS document (created if missing).")
def keygen(out_dir: str, name: str, key_type: str, jwks_file: str | None) -> None:
    """Generate a signing key pair and print its kid: the private key stays on the trusted side."""
    from .keys import write_keypair
    from .keyset import public_jwk

    try:
        private, public = write_keypair(out_dir, name, key_type)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    jwk = public_jwk(public.read_bytes())
    if jwks_file:
        _add_to_jwks(Path(jwks_file), jwk)
    click.echo(f"kid:         {jwk['kid']}\nprivate key: {private} (keep it on the trusted side)\n"
               f"public key:  {public} (give it to the DB-API: DBAPI_JWT_KEY_FILE)"
               + (f"\nJWKS:        {jwks_file} (DBAPI_JWT_KEY_FILE, or publish it for DBAPI_JWT_JWKS_URL)"
                  if jwks_file else ""))


def _add_to_jwks(path: Path, jwk: dict[str, Any]) -> None:
    from .keyset import jwks_document
    from .minting import atomic_write

    keys: list[dict[str, Any]] = []
    if path.exists():
        try:
            keys = json.loads(path.read_text())["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise click.ClickException(f"{path} is not a JWKS document ({exc}); not changed.") from None
    keys = [k for k in keys if k.get("kid") != jwk["kid"]] + [jwk]
    atomic_write(path, json.dumps(jwks_document(keys), indent=2) + "\n", mode=0o644)  # public keys


@main.command()
@click.argument("key_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def jwks(key_files: tuple[str, ...]) -> None:
    """Print a JWKS document with the public keys of KEY_FILES (PEM), e.g. to publish or rotate."""
    from .keyset import jwks_document, public_jwk

    try:
        document = jwks_document(public_jwk(Path(f).read_bytes()) for f in key_files)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(document, indent=2))


@main.command("mint-token")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The private key (PEM) of the trusted side.")
@click.option("--sub", "--subject", "subject", required=True, help="Who the token is for, e.g. a task instance id.")
@click.option("--role", help="The caller's role, for the DB-API's policy.")
@click.option("--scope", "scopes", multiple=True, help="A scope (repeatable); sent space-separated.")
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE", help="Extra claim (string value), e.g. dag_id=etl.")
@click.option("--ttl", default=600, show_default=True, type=int, help="Lifetime in seconds.")
@click.option("--kid", help="Key id for the header (default: the key's RFC 7638 thumbprint).")
@click.option("--issuer", default=None, help="The iss claim (default: dbsession-trusted).")
@click.option("--audience", default=None, help="The aud claim (default: dbsession).")
@click.option("--algorithm", default=None, help="Default: EdDSA for Ed25519 keys, RS256 for RSA keys.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="Write the token to this file (mode 0600, atomic) instead of stdout.")
def mint_token(key_file: str, subject: str, role: str | None, scopes: tuple[str, ...], claims: tuple[str, ...],
               ttl: int, kid: str | None, issuer: str | None, audience: str | None, algorithm: str | None,
               out_file: str | None) -> None:
    """Sign a short-lived token for an untrusted process (printed to stdout, or --out FILE)."""
    from .minting import RESERVED_CLAIMS, write_token_file
    from .minting import mint_token as mint

    bad = [c for c in claims if "=" not in c or not c.split("=", 1)[0]]
    if bad:
        raise click.BadParameter(f"claims look like NAME=VALUE, got {bad[0]!r}", param_hint="--claim")
    extra: dict[str, Any] = dict(c.split("=", 1) for c in claims)
    reserved = RESERVED_CLAIMS & set(extra) | {"role", "scope"} & set(extra)
    if reserved:
        raise click.BadParameter(f"{', '.join(sorted(reserved))} has its own option (--sub, --role, --scope, "
                                 "--ttl, --issuer, --audience)", param_hint="--claim")
    options: dict[str, Any] = {k: v for k, v in (("issuer", issuer), ("audience", audience)) if v}
    try:
        token = mint(Path(key_file).read_bytes(), subject=subject, role=role, scopes=scopes or None, ttl=ttl,
                     kid=kid, algorithm=algorithm, **options, **extra)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"Cannot mint a token with {key_file}: {exc}") from None
    if out_file:
        write_token_file(out_file, token)
        click.echo(f"token written to {out_file} (mode 0600)", err=True)
    else:
        click.echo(token)


@main.command("methods")
@click.option("--import", "modules", multiple=True, metavar="MODULE",
              help="A module defining named methods (repeatable; default: $DBAPI_METHODS).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_methods(modules: tuple[str, ...], as_json: bool) -> None:
    """List the named methods the DB-API would serve, with their versions and signatures."""
    import json

    from .methods import load_methods

    sys.path.insert(0, os.getcwd())
    try:
        registry = load_methods(list(modules) or os.environ.get("DBAPI_METHODS", ""))
    except ImportError as exc:
        raise click.ClickException(f"Cannot import the methods module: {exc}.") from None
    rows = [{"name": m.name, "version": m.version, "signature": m.describe()} for m in registry]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("No named methods are registered (name their modules with --import).")
    for row in [] if as_json else rows:
        click.echo(f"{row['name']}  v{row['version']}  {row['signature']}")


@main.command("db-roles")
@click.option("--database-url", envvar="DBAPI_DATABASE_URL", required=True,
              help="The PostgreSQL database (a login with CREATEROLE that owns the tables).")
@click.option("--metadata", envvar="DBAPI_METADATA", required=True,
              help="Import path of the application's tables, e.g. myapp.models:Base.metadata.")
@click.option("--policy", "policy_file", envvar="DBAPI_POLICY_FILE", default=None,
              type=click.Path(exists=True, dir_okay=False), help="The policy file (default: the open preset).")
@click.option("--namespace", envvar="DBAPI_DB_ROLES_NAMESPACE", default=None,
              help="Prefix of the roles' names (default: the database's name).")
@click.option("--row-security/--no-row-security", envvar="DBAPI_DB_ROW_SECURITY", default=True, show_default=True,
              help="Also turn row filters into row-level-security policies.")
@click.option("--member", default=None, help="The DB-API's login role, made a member of each role "
              "(default: the user of --database-url).")
@click.option("--print", "action", flag_value="print", default=True, help="Print the SQL --apply would run (default).")
@click.option("--apply", "action", flag_value="apply", help="Create, grant, revoke and drop until the database matches.")
@click.option("--verify", "action", flag_value="verify", help="Exit 1, listing the differences, unless it matches.")
@click.option("--drop", "action", flag_value="drop", help="Remove the namespace's roles, privileges and policies.")
def db_roles(database_url: str, metadata: str, policy_file: str | None, namespace: str | None, row_security: bool,
             member: str | None, action: str) -> None:
    """Compile the policy's roles into PostgreSQL roles (the DB-API's second wall, docs/security.md)."""
    import sqlalchemy as sa

    from . import _db_catalog as catalog
    from .app import ConfigError, load_metadata
    from .db_wall import compile_roles
    from .policy import Policy, PolicyError

    sys.path.insert(0, os.getcwd())
    engine = sa.create_engine(database_url)
    try:
        tables = load_metadata(metadata)
        policy = Policy.from_file(policy_file, tables) if policy_file else Policy.open()
        roles = compile_roles(engine, tables, policy, namespace=namespace, row_security=row_security)
        if action == "verify":
            problems = catalog.verify(engine, roles, member=member)
            for problem in problems:
                click.echo(problem, err=True)
            if problems:
                raise SystemExit(1)
            click.echo(f"The database roles of namespace {roles.namespace!r} match the policy.")
            return
        for name in sorted(roles.unwalled, key=str):
            shown = "(fallback)" if name is None else repr(name)
            click.echo(f"-- policy role {shown} may send SQL text or DDL: it runs as the login role, unwalled")
        for role in roles.roles.values():
            shown = "(fallback)" if role.policy_role is None else repr(role.policy_role)
            click.echo(f"-- policy role {shown} runs as {role.name}")
        for warning in roles.warnings:
            click.echo(f"-- warning: {warning}")
        if action == "print":
            with engine.connect() as conn:
                found = catalog.plan(conn, roles, member=member)
            statements = found.statements
            for problem in found.problems:
                click.echo(f"-- problem: {problem}", err=True)
        else:
            statements = (catalog.apply if action == "apply" else catalog.drop)(engine, roles, member=member)
        click.echo("\n".join(f"{s};" for s in statements) or "-- nothing to do: the database matches")
    except (ConfigError, PolicyError, ValueError, catalog.DatabaseRolesError, sa.exc.SQLAlchemyError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
