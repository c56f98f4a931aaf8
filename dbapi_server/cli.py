"""``dbapi-server``: serve the DB-API, and the trusted side's key and token tools."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
@click.option("--port", default=9180, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
@click.option("--methods", envvar="DBAPI_METHODS", default="",
              help="Comma-separated modules defining named methods, e.g. myapp.methods.")
def serve(database_url: str, metadata: str, host: str, port: int, threads: int, methods: str) -> None:
    """Serve the DB-API under waitress (a production WSGI server)."""
    from .app import ConfigError, create_app
    from .serving import serve as run

    sys.path.insert(0, os.getcwd())
    try:
        app = create_app(database_url, metadata, methods=methods.split(","))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    run(app, host=host, port=port, threads=threads)


@main.command()
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False))
@click.option("--name", default="dbapi", show_default=True)
def keygen(out_dir: str, name: str) -> None:
    """Generate an Ed25519 key pair: the private key stays on the trusted side."""
    from .keys import write_keypair

    try:
        private, public = write_keypair(out_dir, name)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"private key: {private} (keep it on the trusted side)\npublic key:  {public} "
               f"(give it to the DB-API: DBAPI_JWT_KEY_FILE)")


@main.command("mint-token")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The private key (PEM).")
@click.option("--subject", required=True, help="Who the token is for, e.g. a task instance id.")
@click.option("--ttl", default=600, show_default=True, type=int, help="Lifetime in seconds.")
@click.option("--algorithm", default="EdDSA", show_default=True)
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE", help="Extra claims.")
def mint_token(key_file: str, subject: str, ttl: int, algorithm: str, claims: tuple[str, ...]) -> None:
    """Sign a short-lived token for an untrusted process (printed to stdout)."""
    from .auth import mint_token as mint

    bad = [c for c in claims if "=" not in c]
    if bad:
        raise click.BadParameter(f"claims look like NAME=VALUE, got {bad[0]!r}", param_hint="--claim")
    extra = dict(c.split("=", 1) for c in claims)
    click.echo(mint(Path(key_file).read_bytes(), subject=subject, ttl=ttl, algorithm=algorithm, **extra))


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
