"""The `berth` command group. Every command, client or server, is an entry point in the
`berth.commands` group (setup.cfg) and is imported only when invoked: `berth config` does not
load the server, and `berth api` does not load the client. So the CLI package imports nothing
server-side, and each process pays only for what it runs."""

from __future__ import annotations

from importlib.metadata import entry_points

import click

PLUGIN_GROUP = "berth.commands"


class BerthGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({ep.name for ep in entry_points(group=PLUGIN_GROUP)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for ep in entry_points(group=PLUGIN_GROUP, name=cmd_name):
            loaded: click.Command = ep.load()
            return loaded
        return None


@click.group(cls=BerthGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Berth: git push your apps to your own machines."""


def main() -> None:
    cli(prog_name="berth")
