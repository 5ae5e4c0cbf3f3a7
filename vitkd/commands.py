"""The command line's shared parts: the parser class (usage errors exit 2), ``--set``, a command's default output
folder, and the registry of commands that packages and methods add (``vitkd logits``, ``vitkd synthesize``, ...).
:mod:`vitkd.cli` adds every registered command to its parser."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from .config import path_under

__all__ = ["EXIT_USAGE", "Parser", "add_overrides", "default_out", "Command", "COMMANDS", "register_command"]

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"vitkd: error: {message}\n")


class _Overrides(argparse.Action):
    """``--set a=1 b=2 --set c=3``: every KEY=VALUE pair after each ``--set``, in order (as mmengine's
    ``--cfg-options``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        for kv in values:
            if "=" not in kv:
                parser.error(f"{option_string} {kv}: expected KEY=VALUE")
        setattr(namespace, self.dest, list(getattr(namespace, self.dest) or []) + list(values))


def add_overrides(parser, help: str) -> None:
    """The ``--set KEY=VALUE [KEY=VALUE ...]`` option (repeatable)."""
    parser.add_argument("--set", action=_Overrides, nargs="+", default=[], metavar="KEY=VALUE", help=help)


def default_out(root: Path, name: Optional[str], config) -> Path:
    """A command's default output folder: ``root/<the config's name>``, else ``root/<config file stem>``; either
    checked as a name (:func:`vitkd.config.path_under`), so a file ``..yaml`` or ``.x.yaml`` is refused."""
    if name:
        return path_under(root, name, key="name")
    return path_under(root, Path(config).stem, key=f"{config}: the default --out (its file name; give --out)")


@dataclass(frozen=True)
class Command:
    """A command a package or method adds: ``add(subparsers, parser_class)`` adds its parser (with ``fn`` set as
    its handler); ``after_disk_full``: what running it again keeps, said when a disk fills during it."""
    name: str
    add: Callable
    after_disk_full: Optional[str] = None


COMMANDS: Dict[str, Command] = {}


def register_command(name: str, add: Callable, after_disk_full: Optional[str] = None) -> None:
    if name in COMMANDS:
        raise ValueError(f"register_command: '{name}' registered twice")
    COMMANDS[name] = Command(name, add, after_disk_full)
