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
@click.option("--policy", "policy_file", envvar="DBAPI_POLICY_FILE", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Per-role policy file (TOML, see docs/security.md); default: the open preset.")
def serve(database_url: str, metadata: str, host: str, port: int, threads: int, policy_file: str | None) -> None:
    """Serve the DB-API under waitress (a production WSGI server)."""
    from .app import ConfigError, create_app
    from .serving import serve as run

    sys.path.insert(0, os.getcwd())
    try:
        app = create_app(database_url, metadata, policy=policy_file)
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
