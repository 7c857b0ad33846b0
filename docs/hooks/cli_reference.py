"""mkdocs hook: the CLI reference page is generated from the argparse parser, so it never goes stale.

A page containing the marker `<!-- cli-reference -->` gets one section per command: its help line and
its full `--help` text.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def cli_reference() -> str:
    from spatialmech.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fix the width for a stable page
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    parts = ["## spatialmech", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, command in sub.choices.items():
        parts += [f"## spatialmech {name}", "", (helps.get(name) or "").capitalize() + ".", "",
                  "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs hook signature)
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
