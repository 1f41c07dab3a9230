"""Section (i): what a phase transition costs as the model and the world grow, per strategy.

Runs ``workers/transition_scaling.py`` (a GPT-style stack, 3 phases, AdamW) for every strategy over model sizes at
2 ranks, and over 1, 2 and 4 ranks at one size. For each run it reads transition 2 (keeps the head's group and the
top quarter of the blocks) against transition 1 (keeps only the head's): the extra peak memory per rank that keeping
the trained group costs, as a ratio to what the rank holds for it in steady state (12 bytes x kept parameters,
divided by the world where the strategy shards it), and the transition's wall time. Fits the exponent of time and
extra memory against model size and against world size. ``--checkout DIR`` measures another checkout of fts_dist
(e.g. one from before a change) with this worker.

    python -m benchmarks.transition_scaling --out OUT [--checkout DIR] [--sizes 256x8,512x8] [--worlds 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import Section, free_port, markdown_table

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {  # label -> worker arguments
    "DDP": ["--strategy", "ddp"],
    "FSDP2": ["--strategy", "fsdp2"],
    "FSDP1": ["--strategy", "fsdp1"],
    "ZeRO-1": ["--strategy", "deepspeed", "--zero-stage", "1"],
    "ZeRO-2": ["--strategy", "deepspeed", "--zero-stage", "2"],
    "ZeRO-3": ["--strategy", "deepspeed", "--zero-stage", "3"],
}
SHARDED = {"FSDP2", "FSDP1", "ZeRO-1", "ZeRO-2", "ZeRO-3"}


def run_one(
    checkout: Path, strategy: str, width: int, depth: int, world: int, out: Path, restore: bool
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    worker = checkout / "benchmarks" / "workers" / "transition_scaling.py"
    if not worker.exists():
        worker.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "benchmarks" / "workers" / "transition_scaling.py", worker)
    args = [str(worker), *STRATEGIES[strategy], "--width", str(width), "--depth", str(depth), "--out", str(out)]
    args += ["--restore"] if restore else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    port = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), *port, *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=checkout)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        errors = [
            line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line and "elastic" not in line
        ]
        return {"error": errors[:3]}
    ranks = [json.loads(path.read_text()) for path in sorted(out.glob("scaling-rank*.json"))]
    first, second = (max((r["transitions"][i] for r in ranks), key=lambda t: t["extra_peak"]) for i in (0, 1))
    share = 12 * (second["kept"] - first["kept"]) / (world if strategy in SHARDED else 1)
    anonymous = [max(r["transitions"][i].get("extra_anonymous_peak", 0) for r in ranks) for i in (0, 1)]
    return {
        "params": ranks[0]["params"],
        "kept_bytes_per_rank": share,
        "keep_ratio": (second["extra_peak"] - first["extra_peak"]) / share,
        "keep_ratio_private": (anonymous[1] - anonymous[0]) / share,
        "extra_peak": second["extra_peak"],
        "seconds": max(r["transitions"][1]["seconds"] for r in ranks),
    }


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(points) < 2:
        return float("nan")
    mx, my = (sum(p[i] for p in points) / len(points) for i in (0, 1))
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def measure(
    checkout: Path, strategies: list[str], sizes: list[tuple[int, int]], worlds: list[int], restore: bool, out: Path
) -> dict[str, Any]:
    """Every strategy over ``sizes`` at 2 ranks and over ``worlds`` at the second size."""
    results: dict[str, Any] = {}
    middle = sizes[min(1, len(sizes) - 1)]
    for strategy in strategies:
        for (width, depth), world in [(size, 2) for size in sizes] + [(middle, w) for w in worlds if w != 2]:
            key = f"{strategy} {width}x{depth} w{world}"
            results[key] = {"strategy": strategy, "width": width, "depth": depth, "world": world}
            results[key].update(run_one(checkout, strategy, width, depth, world, out / key.replace(" ", "_"), restore))
            print(json.dumps({key: results[key]}), flush=True)
    return results


def section(after: dict[str, Any], before: dict[str, Any] | None, plots: Path, title_suffix: str = "") -> Section:
    """Tables of keep ratio and transition time per strategy and size (before and after, where given), the world
    sweep, fitted exponents, and two plots."""
    strategies = list(dict.fromkeys(r["strategy"] for r in after.values()))
    ok = [r for r in after.values() if "params" in r]
    sizes = sorted({(r["width"], r["depth"], r["params"]) for r in ok if r["world"] == 2}, key=lambda s: s[2])
    rows = []
    for strategy in strategies:
        for width, depth, params in sizes:
            ours = after.get(f"{strategy} {width}x{depth} w2", {})
            old = (before or {}).get(f"{strategy} {width}x{depth} w2", {})
            rows.append([
                strategy, f"{params / 1e6:.0f}M", _fmt(old.get("keep_ratio")), _fmt(ours.get("keep_ratio")),
                _fmt(ours.get("extra_peak", float("nan")) / 1e6, 1), _fmt(old.get("seconds"), 3),
                _fmt(ours.get("seconds"), 3),
            ])  # fmt: skip
    size_table = markdown_table(
        ["strategy", "model", "keep ratio before", "keep ratio", "extra peak MB", "time s before", "time s"], rows
    )
    worlds = sorted({r["world"] for r in ok})
    middle = next((s for s in sizes if any(r["world"] != 2 and r["params"] == s[2] for r in ok)), sizes[0])
    world_rows, exponents = [], []
    for strategy in strategies:
        by_world = sorted((r for r in ok if r["strategy"] == strategy and r["params"] == middle[2]), key=_world)
        cells = {r["world"]: r for r in by_world}
        world_rows.append(
            [
                strategy,
                *(
                    f"{_fmt(cells[w]['keep_ratio'])} / {_fmt(cells[w]['seconds'], 3)}" if w in cells else "-"
                    for w in worlds
                ),
            ]
        )
        by_size = [r for r in ok if r["strategy"] == strategy and r["world"] == 2]
        exponents.append([
            strategy,
            _fmt(exponent([r["params"] for r in by_size], [r["seconds"] for r in by_size])),
            _fmt(exponent([r["params"] for r in by_size], [max(r["extra_peak"], 1) for r in by_size])),
            _fmt(exponent([r["world"] for r in by_world], [r["seconds"] for r in by_world])),
        ])  # fmt: skip
    world_table = markdown_table(["strategy", *(f"{w} rank(s): keep ratio / time s" for w in worlds)], world_rows)
    exponent_table = markdown_table(["strategy", "time ~ size^k", "extra peak ~ size^k", "time ~ world^k"], exponents)
    plot_paths = [
        _line_plot(plots / "transition_keep_ratio.png", after, strategies, "keep_ratio", "keep ratio (x share)"),
        _line_plot(plots / "transition_seconds.png", after, strategies, "seconds", "transition time (s)"),
    ]
    markdown = (
        f"{size_table}\n\nAt {middle[2] / 1e6:.0f}M parameters over the world size:\n\n{world_table}\n\n"
        "Fitted exponents (least squares on log-log; over model size at 2 ranks, over world size at "
        f"{middle[2] / 1e6:.0f}M):\n\n{exponent_table}"
    )
    return Section(f"(i) The cost of a transition as the model and the world grow{title_suffix}", markdown, plot_paths)


def _world(record: dict[str, Any]) -> int:
    return int(record["world"])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _line_plot(path: Path, results: dict[str, Any], strategies: list[str], key: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_world) = plt.subplots(1, 2, figsize=(10, 3.6))
    for strategy in strategies:
        ok = [r for r in results.values() if r["strategy"] == strategy and "params" in r]
        sized = sorted((r for r in ok if r["world"] == 2), key=lambda r: r["params"])
        by_size.plot([r["params"] / 1e6 for r in sized], [r[key] for r in sized], marker="o", label=strategy)
        middle = {r["params"] for r in ok if r["world"] != 2}
        worlds = sorted((r for r in ok if r["params"] in middle), key=_world)
        by_world.plot([r["world"] for r in worlds], [r[key] for r in worlds], marker="o", label=strategy)
    by_size.set_xscale("log")
    by_size.set_xlabel("model parameters (M), 2 ranks")
    by_world.set_xlabel("ranks")
    for ax in (by_size, by_world):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    by_world.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(quick: bool, out: Path) -> list[Section]:
    """For ``benchmarks.run``: the grid over this checkout (quick: two sizes at 2 ranks)."""
    sizes = [(256, 8), (512, 8)] if quick else [(256, 8), (512, 8), (768, 8), (1024, 12)]
    results = measure(ROOT, list(STRATEGIES), sizes, [2] if quick else [1, 2, 4], False, out)
    return [section(results, None, out)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--sizes", default="256x8,512x8,768x8,1024x12", help="WIDTHxDEPTH, swept at 2 ranks")
    parser.add_argument("--worlds", default="1,2,4", help="swept at the second size")
    parser.add_argument("--restore", action="store_true", help="every transition restores the best checkpoint")
    parser.add_argument("--report", nargs="+", type=Path, help="AFTER.json [BEFORE.json]: print section (i)")
    args = parser.parse_args()
    if args.report:
        after = json.loads(args.report[0].read_text())
        before = json.loads(args.report[1].read_text()) if len(args.report) > 1 else None
        args.out.mkdir(parents=True, exist_ok=True)
        result = section(after, before, args.out)
        print(f"## {result.title}\n\n{result.markdown}\n")
        return
    sizes = [(int(w), int(d)) for w, d in (size.split("x") for size in args.sizes.split(","))]
    worlds = [int(w) for w in args.worlds.split(",")]
    results = measure(
        args.checkout.resolve(), args.strategies.split(","), sizes, worlds, args.restore, args.out / "runs"
    )
    (args.out / "transition-scaling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
