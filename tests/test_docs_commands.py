"""Every `parley` command the README and docs/ show is one the CLI takes, as written.

A command in a shell block that the parser refuses (a renamed option, a
subcommand that moved) fails here, so the documents cannot drift from the CLI.
What the commands do is tested where they are used (tests/integration).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from parley.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCUMENTS:
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words and words[-1] == "&":  # run in the background
                        words = words[:-1]
                    if words and words[0] in ("parley", ".venv/bin/parley"):
                        found.append((doc.name, shlex.join(words[1:])))
    return found


def test_the_documents_show_commands_at_all() -> None:
    docs = {doc for doc, _ in shown_commands()}
    assert {"README.md", "operator-guide.md"} <= docs


@pytest.mark.parametrize(("doc", "command"), shown_commands())
def test_a_shown_command_is_one_the_cli_takes(doc: str, command: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    try:
        args = build_parser().parse_args(shlex.split(command))
    except SystemExit as refused:
        raise AssertionError(f"{doc}: 'parley {command}' is refused by the CLI:"
                             f" {capsys.readouterr().err}") from refused
    assert hasattr(args, "fn"), f"{doc}: 'parley {command}' names no command"
