"""Section (i): what a phase transition costs as the model and the world grow, per strategy.

Runs ``workers/transition_scaling.py`` (a GPT-style stack, 3 phases, AdamW) for every strategy over model sizes at
2 ranks, and over 1, 2 and 4 ranks at one size. For each run it reads transition 2 (keeps the head's group and the
top half of the blocks) against transition 1 (keeps only the head's): the extra peak memory per rank that keeping
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
import time
from pathlib import Path
from typing import Any

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


def run(checkout: Path, strategy: str, width: int, depth: int, world: int, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    worker = checkout / "benchmarks" / "workers" / "transition_scaling.py"
    if not worker.exists():
        worker.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "benchmarks" / "workers" / "transition_scaling.py", worker)
    args = [str(worker), *STRATEGIES[strategy], "--width", str(width), "--depth", str(depth), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    port = ["--master_addr", "127.0.0.1", "--master_port", str(29000 + int(time.time() * 1000) % 20000)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), *port, *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=checkout)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    ranks = [json.loads(path.read_text()) for path in sorted(out.glob("scaling-rank*.json"))]
    first, second = (max((r["transitions"][i] for r in ranks), key=lambda t: t["extra_peak"]) for i in (0, 1))
    share = 12 * (second["kept"] - first["kept"]) / (world if strategy in SHARDED else 1)
    return {
        "params": ranks[0]["params"],
        "kept_bytes_per_rank": share,
        "keep_ratio": (second["extra_peak"] - first["extra_peak"]) / share,
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--sizes", default="256x8,512x8,768x8,1024x12", help="WIDTHxDEPTH, swept at 2 ranks")
    parser.add_argument("--worlds", default="1,2,4", help="swept at the second size")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    worlds = [int(w) for w in args.worlds.split(",")]
    results: dict[str, Any] = {}
    for strategy in args.strategies.split(","):
        grid = [(size, 2) for size in sizes] + [(sizes[min(1, len(sizes) - 1)], w) for w in worlds if w != 2]
        for (width, depth), world in grid:
            key = f"{strategy} {width}x{depth} w{world}"
            results[key] = {"strategy": strategy, "width": width, "depth": depth, "world": world}
            results[key].update(
                run(args.checkout.resolve(), strategy, width, depth, world, args.out / "runs" / key.replace(" ", "_"))
            )
            print(json.dumps({key: results[key]}), flush=True)
    (args.out / "transition-scaling.json").write_text(json.dumps(results, indent=1))
    for strategy in args.strategies.split(","):
        by_size = [r for r in results.values() if r["strategy"] == strategy and r["world"] == 2 and "params" in r]
        by_world = [
            r
            for r in results.values()
            if r["strategy"] == strategy and (r["width"], r["depth"]) == sizes[min(1, len(sizes) - 1)] and "params" in r
        ]
        print(
            f"{strategy}: time ~ size^{exponent([r['params'] for r in by_size], [r['seconds'] for r in by_size]):.2f}, "
            f"extra peak ~ size^{exponent([r['params'] for r in by_size], [r['extra_peak'] for r in by_size]):.2f}, "
            f"time ~ world^{exponent([r['world'] for r in by_world], [r['seconds'] for r in by_world]):.2f}, "
            f"extra peak ~ world^{exponent([r['world'] for r in by_world], [r['extra_peak'] for r in by_world]):.2f}"
        )


if __name__ == "__main__":
    main()
