"""``dbsession``: client-side checks for an isolated process."""

from __future__ import annotations

import json

import click

__all__ = ["main"]


@click.group()
def main() -> None:
    """Client tools of dbsession (database access isolation for SQLAlchemy)."""


@main.command()
@click.option("--host", "api_host", envvar="DATABASE_API_HOST", required=True,
              help="The DB-API, e.g. http://127.0.0.1:9180 (default: $DATABASE_API_HOST).")
def info(api_host: str) -> None:
    """Show the DB-API's handshake: dialect, driver, server and wire versions, schema hash."""
    from .dialect import base_url, isolated_url, server_info
    from .transport import transport_for

    handshake = server_info(transport_for(base_url(isolated_url(api_host))))
    handshake = {k: v for k, v in handshake.items() if k != "dialect_state"}
    click.echo(json.dumps(handshake, indent=2))


@main.command("methods")
@click.option("--host", "api_host", envvar="DATABASE_API_HOST", required=True,
              help="The DB-API, e.g. http://127.0.0.1:9180 (default: $DATABASE_API_HOST).")
def list_methods(api_host: str) -> None:
    """List the named methods the DB-API serves, with versions and signatures (needs a token:
    $DATABASE_API_TOKEN or $DATABASE_API_TOKEN_FILE)."""
    from .config import get_settings
    from .dialect import base_url, isolated_url
    from .exceptions import DBAPIRequestError
    from .transport import transport_for

    settings = get_settings()
    transport = transport_for(base_url(isolated_url(api_host)), settings.token, settings.token_file)
    try:
        served = transport.get("/methods")["methods"]
    except DBAPIRequestError as exc:
        raise click.ClickException(str(exc)) from None
    for method in served:
        click.echo(f"{method['name']}  v{method['version']}  {method['signature']}")
