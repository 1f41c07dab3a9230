"""The benchmark suite's entry point: prints markdown tables, writes PNG plots, optionally a markdown report.

    python -m benchmarks.run --quick                  # a few minutes on 2 CPU cores
    python -m benchmarks.run --markdown BENCHMARKS.md # the full run behind BENCHMARKS.md

Needs the bench extra: pip install -e ".[bench]". Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import (
    deepspeed_costs,
    export_memory,
    frozen_batchnorm,
    memory_budget,
    overhead_and_peers,
    phase_costs,
    sharded_costs,
    time_to_accuracy,
    transition_scaling,
)
from benchmarks.common import Section

SECTIONS = {
    "overhead": overhead_and_peers,
    "phases": phase_costs,
    "accuracy": time_to_accuracy,
    "sharded": sharded_costs,
    "deepspeed": deepspeed_costs,
    "batchnorm": frozen_batchnorm,
    "scaling": transition_scaling,
    "budget": memory_budget,
    "export": export_memory,
}
PREFACE = (
    "Written by `python -m benchmarks.run --markdown BENCHMARKS.md` (after `pip install -e '.[bench]'`); "
    "`--quick` runs a smaller version in a few minutes. Every figure is measured in the same session as its "
    "baseline; single timings on a shared 2-core machine vary, so read ratios and medians, not single values.\n\n"
)


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def report(sections: list[Section], quick: bool, plots_dir: Path, markdown_dir: Path) -> str:
    lines = [f"Run on {datetime.date.today().isoformat()}: {machine()}; mode: {'quick' if quick else 'full'}.", ""]
    for section in sections:
        lines += [f"## {section.title}", "", section.markdown, ""]
        for plot in section.plots:
            lines += [f"![{plot.stem}]({os.path.relpath(plot.resolve(), markdown_dir.resolve())})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller data")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    parser.add_argument("--plots", default="benchmarks/results", help="where PNG plots go")
    parser.add_argument("--markdown", default=None, help="also write the report to this file")
    args = parser.parse_args()
    plots = Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fts_dist_bench_") as scratch:
        for name in args.only.split(","):
            work = Path(scratch) / name
            work.mkdir()
            for section in SECTIONS[name].run(args.quick, work):
                section.plots = [p.replace(plots / p.name) for p in section.plots]
                sections.append(section)
                print(f"\n## {section.title}\n\n{section.markdown}\n", flush=True)
    markdown_dir = Path(args.markdown).parent if args.markdown else Path.cwd()
    text = report(sections, args.quick, plots, markdown_dir)
    if args.markdown:
        Path(args.markdown).write_text("# Benchmarks\n\n" + PREFACE + text)
    print(f"done in {time.perf_counter() - started:.0f} s; plots in {plots}/")


if __name__ == "__main__":
    main()
