"""The README's commands table names every kvmtest subcommand: --help and the README stay true
to each other."""

import re
from pathlib import Path

from kvmtest.cli.main import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_subcommand_is_in_the_readme_commands_table():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    table = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `kvmtest ([a-z-]+)", table, re.M))
    listed |= set(re.findall(r" / `kvmtest ([a-z-]+)", table))
    assert set(commands.choices) - listed == set()
