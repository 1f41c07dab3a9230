"""MkDocs hooks: the pages generated at build time, so they cannot drift from what they describe.

- ``cli.md``: the help of every ``fts-dist`` command, from the parsers themselves;
- ``reliability.md`` and ``benchmarks.md``: RELIABILITY.md and BENCHMARKS.md at the repository's root (one source,
  read on GitHub and here), with the benchmark plots beside them.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
_PLOT = re.compile(r"\]\(benchmarks/results/([\w.-]+\.png)\)")


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    files.append(File.generated(config, "reliability.md", content=(ROOT / "RELIABILITY.md").read_text()))
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    for plot in sorted(set(_PLOT.findall(benchmarks))):
        files.append(File.generated(config, f"images/{plot}", abs_src_path=str(ROOT / "benchmarks" / "results" / plot)))
    files.append(File.generated(config, "benchmarks.md", content=_PLOT.sub(r"](images/\1)", benchmarks)))
    return files


def cli_reference() -> str:
    """Every ``fts-dist`` command's ``--help``, as the installed parsers print it."""
    os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal: a width that fits the page, whatever builds it
    from fts_dist.cli import _build_parser

    lines = [
        "# Command line",
        "",
        "Generated from the parsers at build time. `fts-dist fit` is LightningCLI: `fts-dist fit --help` lists "
        "every model, data, trainer and callback option of a config.",
        "",
    ]
    for name, parser in _commands(_build_parser(), "fts-dist"):
        lines += [f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _commands(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                if sub.add_help:  # fit: LightningCLI parses its own arguments
                    found += _commands(sub, f"{name} {sub_name}")
    return found
