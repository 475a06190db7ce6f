"""The `berth` command group. Client commands are listed here; server commands (`server`,
`api`, …) are entry points in the `berth.commands` group, loaded only when asked for, so the
CLI neither imports nor needs the server's code."""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from berth.cli import cmd_apps, cmd_config, cmd_releases, cmd_session, cmd_tokens

PLUGIN_GROUP = "berth.commands"


class BerthGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        plugins = {ep.name for ep in entry_points(group=PLUGIN_GROUP)}
        return sorted(set(super().list_commands(ctx)) | plugins)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for ep in entry_points(group=PLUGIN_GROUP, name=cmd_name):
            loaded: click.Command = ep.load()
            return loaded
        return None


@click.group(cls=BerthGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Berth: git push your apps to your own machines."""


for module in (cmd_session, cmd_apps, cmd_config, cmd_releases, cmd_tokens):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="berth")
