"""On one CUDA device: ZeRO-2 and FSDP2 through two transitions of a GPT-style stack, with the CUDA memory each
transition allocates beyond what was allocated before it, against the rank's share of the kept groups
(12 bytes x kept trainable parameters: fp32 master or weight plus AdamW's two moments).

    python -m benchmarks.gpu_transitions --out OUT [--width 1024 --depth 16]

Transition 1 keeps the head; transition 2 keeps the head and the top quarter of the blocks (both add a quarter), so
the second row's growth over the first is what keeping a trained group costs. Prints a table and writes
OUT/gpu-transitions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "benchmarks" / "workers" / "transition_scaling.py"
RUNS = [  # (label, worker arguments)
    ("ZeRO-2 fp32", ["--strategy", "deepspeed", "--zero-stage", "2"]),
    ("ZeRO-2 bf16-mixed", ["--strategy", "deepspeed", "--zero-stage", "2", "--precision", "bf16-mixed"]),
    ("ZeRO-3 fp32", ["--strategy", "deepspeed", "--zero-stage", "3"]),
    ("FSDP2 fp32", ["--strategy", "fsdp2"]),
    ("FSDP2 bf16-mixed", ["--strategy", "fsdp2", "--precision", "bf16-mixed"]),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=16)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "4"}
    results = {}
    for label, extra in RUNS:
        out = args.out / label.replace(" ", "_")
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(WORKER), "--accelerator", "cuda", "--out", str(out), *extra]
        command += ["--width", str(args.width), "--depth", str(args.depth)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode != 0:
            print(f"{label}: failed ({proc.returncode})\n{(proc.stdout + proc.stderr)[-2500:]}", flush=True)
            continue
        results[label] = json.loads((out / "scaling-rank0.json").read_text())
    print("| run | params | transition | kept | share (MB) | CUDA extra peak (MB) | / share | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, result in results.items():
        for record in result["transitions"]:
            share = 12 * record["kept"]
            extra = record.get("cuda_extra_peak", float("nan"))
            print(
                f"| {label} | {result['params'] / 1e6:.1f}M | {record['depth']} | {record['kept'] / 1e6:.2f}M | "
                f"{share / 1e6:.1f} | {extra / 1e6:.1f} | {extra / share:.2f} | {record['seconds']:.2f} |"
            )
        first, second = result["transitions"][:2]
        growth = (second["cuda_extra_peak"] - first["cuda_extra_peak"]) / (12 * (second["kept"] - first["kept"]))
        print(f"| {label}: keeping the trained group costs {growth:.2f} x its share |")
    print(
        "\n| run | phase | CUDA peak (MB) | allocated at its end (MB) | plan (MB) | of which activations (MB) | "
        "peak / plan |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, result in results.items():
        planned = plan_for(label, args.width, args.depth)
        for phase, (measured, plan) in enumerate(zip(result["cuda_phases"], planned, strict=False)):
            total, activations = plan["total"] or 1, plan["activations"] or 0
            print(
                f"| {label} | {phase} | {measured['peak'] / 1e6:.1f} | {measured['allocated'] / 1e6:.1f} | "
                f"{total / 1e6:.1f} | {activations / 1e6:.1f} | {measured['peak'] / total:.2f} |"
            )
    (args.out / "gpu-transitions.json").write_text(json.dumps(results, indent=1))


def plan_for(label: str, width: int, depth: int) -> list[dict[str, Any]]:
    """``fts_dist.memory``'s plan (bytes per rank, activations traced for one micro-batch) for a run's model,
    schedule, strategy and DeepSpeed config."""
    import torch

    from benchmarks.workers.transition_scaling import BATCH, SEQUENCE, Stack, schedule
    from fts_dist.memory import meta_device, plan_memory

    extra = dict(RUNS)[label]
    strategy = "fsdp2" if "fsdp2" in extra else "deepspeed"
    stage = int(extra[extra.index("--zero-stage") + 1]) if "--zero-stage" in extra else None
    precision = extra[extra.index("--precision") + 1] if "--precision" in extra else "32-true"
    with meta_device():
        model = Stack(width, depth)
        batch = (torch.empty(BATCH, SEQUENCE, width), torch.empty(BATCH, dtype=torch.long))
    plan = plan_memory(
        schedule(depth), model, strategy, 1, zero_stage=stage, precision=precision, batch=batch,
        step=lambda module, b: module.training_step(b, 0), zero={"stage": stage} if stage else None,
    )  # fmt: skip
    return [p.bytes_per_rank for p in plan.phases]


if __name__ == "__main__":
    main()
