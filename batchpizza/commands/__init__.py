"""The commands beside `run`, each a small click command that cli.py registers on its group:
status.py (`status`, `report`) and mock_server.py (`mock-server`)."""

import click

from batchpizza.errors import BatchpizzaError
from batchpizza.redact import inert


def say(exc: BatchpizzaError) -> None:
    """An error on stderr. It may quote a server (a 401's message), so it is made inert: the
    terminal shows escape sequences rather than obeying them."""
    click.echo(f"batchpizza: {inert(exc.message, lines=True)}", err=True)
