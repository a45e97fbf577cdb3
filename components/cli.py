"""The ``skyform`` command: a thin group that loads each subcommand only when it is run.

Loading is lazy so that ``skyform validate`` never pays for importing Pulumi and the cloud
SDKs, and ``skyform agent`` never imports them at all. Each subcommand lives in its own module
under ``components/commands/``.
"""

from __future__ import annotations

import importlib

import click

#: name -> (module, attribute, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("components.commands.validate", "validate", "Check a service YAML."),
    "synth": ("components.commands.synth", "synth", "Print the resource plan, offline."),
    "local": ("components.commands.local", "local", "Run the service on this machine."),
    "agent": ("components.commands.agent", "agent", "Start the controller agent."),
    "status": ("components.commands.status", "status",
               "Show a running service (skyform local, or --stack)."),
    "logs": ("components.commands.logs", "logs", "Print or follow replica and agent logs."),
    "preview": ("components.commands.stack", "preview",
                "pulumi preview of a stack, with no language plugin needed."),
    "up": ("components.commands.stack", "up", "pulumi up of a stack (the agent's path)."),
    "refresh": ("components.commands.stack", "refresh", "pulumi refresh of a stack."),
    "destroy": ("components.commands.stack", "destroy", "pulumi destroy of a stack."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _ = entry
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="skyform")
def main() -> None:
    """skyform: deploy a SkyServe service YAML with Pulumi, or run it locally."""
