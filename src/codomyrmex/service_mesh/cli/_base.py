"""The subcommand table every ``service-mesh`` command registers in, and the helpers
the commands share (value parsers, the missing-extra message)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .._options import number, whole
from ..demo.options import DEFAULT_STATUS_PORT

__all__ = [
    "COMMANDS",
    "STATUS_URL",
    "Command",
    "Configure",
    "Run",
    "add_status_url",
    "command",
    "existing_file",
    "missing",
    "positive_float",
    "positive_int",
]

Run = Callable[[argparse.Namespace], int]
"""Runs a parsed subcommand; returns the exit status."""
Configure = Callable[[argparse.ArgumentParser], Run]
"""Adds a subcommand's options to its parser and returns the function that runs it."""


@dataclass(frozen=True)
class Command:
    """One row of the subcommand table."""

    help: str
    configure: Configure


COMMANDS: dict[str, Command] = {}
"""The subcommands, by name, in the order ``--help`` lists them."""


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register the decorated function as subcommand ``name`` (see :mod:`..cli`)."""

    def register(configure: Configure) -> Configure:
        COMMANDS[name] = Command(help, configure)
        return configure

    return register


STATUS_URL = f"http://127.0.0.1:{DEFAULT_STATUS_PORT}/status"
"""Where ``status`` and ``dashboard`` look by default: the demo's status endpoint."""


def add_status_url(parser: argparse.ArgumentParser, meaning: str) -> None:
    """The ``--url`` option of the commands that read a status endpoint."""
    parser.add_argument("--url", default=STATUS_URL, help=f"{meaning} (default: %(default)s)")


positive_int = whole(1)
positive_float = number(0.0, above=True)


def existing_file(text: str) -> str:
    """A path to an existing file."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def missing(extra: str, error: ImportError, hint: str = "") -> int:
    """Say which extra installs what a command could not import; the exit status 2."""
    print(
        f"service-mesh: this needs {error.name}: pip install 'codomyrmex-service-mesh[{extra}]'"
        f"{hint}",
        file=sys.stderr,
    )
    return 2
