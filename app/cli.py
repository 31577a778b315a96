"""The `artifact-proxy` command (`python -m app`): the server's commands (`app/server_cli.py`) and the client's
(`app/client/commands.py`), each imported when it is the one asked for. A client command so never loads uvicorn,
the settings tree or the stores, and starts in about half the time (`ls`, `cp` of a few files: the start is most of
their run).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from app import __version__

# command name -> "module:attribute" of its click command
COMMANDS = {
    "server": "app.server_cli:server",
    "settings": "app.server_cli:settings_command",
    "hash-password": "app.server_cli:hash_password_command",
    "hash-token": "app.server_cli:hash_token_command",
    "ls": "app.client.commands:ls",
    "cp": "app.client.commands:cp",
    "rm": "app.client.commands:rm",
    "verify": "app.client.commands:verify",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where.split(":")
        command: Any = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), where
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["--help"]})
@click.version_option(__version__, "--version", prog_name="artifact-proxy")
def main() -> None:
    """artifact-proxy: an async, streaming drop-in for `mlflow server --artifacts-only`, and its client."""
