"""Section (j): under a fixed memory budget per rank, how much larger a model a staged schedule fine-tunes than full
fine-tuning does, per strategy; planned on the meta device, then confirmed by a measured run at small scale on CPU.

Planned: Llama-style configs from 1B to 70B (``fts_dist.examples.llama.LlamaLike``), 8 ranks, bf16-mixed, AdamW,
one sequence of 2048 tokens per rank (activations traced, no activation checkpointing), 80 GiB per rank. Full
fine-tuning trains every parameter; the staged schedule trains the head and final norm, then the top quarter of
the decoder layers, and its binding phase is the last. Confirmed: ``workers/budget_run.py`` runs a small
transformer stack under FSDP2 on 2 CPU ranks, full and staged, and measures what a rank holds after each
phase's optimizer steps plus what a step saves for backward, against a budget the plan says separates the two.

    python -m benchmarks.memory_budget --out OUT [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, Section, markdown_table, read_json, run_worker

LLAMAS = {  # name -> LlamaConfig keyword arguments (public model cards' shapes)
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256),
    "8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    "34B": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256),
}  # fmt: skip
STRATEGIES = {  # label -> (strategy, zero stage)
    "DDP": ("ddp", None),
    "FSDP2": ("fsdp2", None),
    "FSDP1": ("fsdp1", None),
    "ZeRO-1": ("deepspeed", 1),
    "ZeRO-2": ("deepspeed", 2),
    "ZeRO-3": ("deepspeed", 3),
}
BUDGET, WORLD, TOKENS = 80 * 2**30, 8, 2048
WORKER = ROOT / "benchmarks" / "workers" / "budget_run.py"
CPU_WIDTHS, CPU_DEPTH, CPU_WORLD = (128, 256, 384, 512), 8, 2


def llama_schedules(layers: int) -> dict[str, dict[int, dict[str, Any]]]:
    quarter = [rf"model\.model\.layers\.{i}\..*" for i in range(layers - layers // 4, layers)]
    return {
        "full": {0: {"params": [".*"]}},
        "staged": {0: {"params": [r"model\.lm_head\..*", r"model\.model\.norm\..*"]}, 1: {"params": quarter}},
    }


def plan_llamas() -> dict[str, dict[str, dict[str, int]]]:
    """Per model and strategy: the binding phase's bytes per rank, full and staged."""
    from fts_dist.examples.llama import LlamaLike
    from fts_dist.memory import meta_device, plan_memory

    totals: dict[str, dict[str, dict[str, int]]] = {}
    for name, config in LLAMAS.items():
        with meta_device():
            model = LlamaLike(**config)
            tokens = torch.empty(1, TOKENS, dtype=torch.long)
        schedules = llama_schedules(int(config["num_hidden_layers"]))
        totals[name] = {}
        for label, (strategy, stage) in STRATEGIES.items():
            totals[name][label] = {}
            for mode, schedule in schedules.items():
                plan = plan_memory(
                    schedule, model, strategy, WORLD, zero_stage=stage, precision="bf16-mixed", batch=tokens
                )
                totals[name][label][mode] = int(plan.binding.bytes_per_rank["total"] or 0)
    return totals


def llama_tables(totals: dict[str, dict[str, dict[str, int]]]) -> str:
    def cell(value: int) -> str:
        return f"{value / 2**30:.0f}" + ("" if value <= BUDGET else " ✗")

    rows, largest = [], []
    for label in STRATEGIES:
        rows.append([label, *(f"{cell(t[label]['full'])} / {cell(t[label]['staged'])}" for t in totals.values())])
        fits = {mode: [n for n, t in totals.items() if t[label][mode] <= BUDGET] for mode in ("full", "staged")}
        largest.append(
            [label, fits["full"][-1] if fits["full"] else "none", fits["staged"][-1] if fits["staged"] else "none"]
        )
    per_model = markdown_table(["strategy", *(f"{n}: full / staged (GiB)" for n in totals)], rows)
    summary = markdown_table(
        ["strategy", "largest full fine-tune in 80 GiB", "largest staged schedule in 80 GiB"], largest
    )
    return summary + "\n\nPer rank, the binding phase (✗: over 80 GiB):\n\n" + per_model


def plan_stacks() -> dict[int, dict[str, int]]:
    """The CPU family's plans: FSDP2, 2 ranks, fp32, AdamW, one micro-batch traced through the training step."""
    from benchmarks.workers.budget_run import schedule
    from benchmarks.workers.transition_scaling import BATCH, SEQUENCE, Stack
    from fts_dist.memory import meta_device, plan_memory

    planned = {}
    for width in CPU_WIDTHS:
        with meta_device():
            model = Stack(width, CPU_DEPTH)
            batch = (torch.empty(BATCH, SEQUENCE, width), torch.empty(BATCH, dtype=torch.long))
        planned[width] = {}
        for mode in ("full", "staged"):
            plan = plan_memory(
                schedule(mode, CPU_DEPTH), model, "fsdp2", CPU_WORLD, batch=batch,
                step=lambda module, b: module.training_step(b, 0),
            )  # fmt: skip
            planned[width][mode] = int(plan.binding.bytes_per_rank["total"] or 0)
    return planned


def measure_stack(width: int, mode: str, work: Path) -> int:
    """The most a rank held in the binding phase (states plus a step's saved tensors), measured."""
    out = work / f"{width}-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    run_worker(WORKER, ["--width", str(width), "--depth", str(CPU_DEPTH), "--mode", mode, "--out", str(out)], CPU_WORLD)
    ranks = [read_json(out / f"budget-rank{r}.json")["phases"] for r in range(CPU_WORLD)]
    return max(sum(phase.values()) for phases in ranks for phase in phases.values())


def confirm_on_cpu(work: Path) -> str:
    planned = plan_stacks()
    # a budget between the full and the staged plan of the second-largest width: the plan says staged fits up to
    # a larger model than full does
    width = CPU_WIDTHS[-2]
    budget = (planned[width]["full"] + planned[width]["staged"]) // 2
    largest = {
        mode: max((w for w in CPU_WIDTHS if planned[w][mode] <= budget), default=None) for mode in ("full", "staged")
    }
    rows = []
    for w, mode in sorted(
        {(largest["staged"], "staged"), (largest["staged"], "full"), (largest["full"], "full")}
        - {(None, "full"), (None, "staged")}
    ):
        measured = measure_stack(w, mode, work)
        plan = planned[w][mode]
        rows.append([f"width {w}", mode, f"{plan / 2**20:.2f}", f"{measured / 2**20:.2f}", f"{measured / plan:.3f}",
                     "yes" if plan <= budget else "no", "yes" if measured <= budget else "no"])  # fmt: skip
    header = ["model", "schedule", "planned (MiB)", "measured (MiB)", "measured / plan", "fits (plan)", "fits (run)"]
    return (
        f"Budget {budget / 2**20:.2f} MiB per rank; largest width whose full fine-tune fits: {largest['full']}, whose "
        f"staged schedule fits: {largest['staged']} (depth {CPU_DEPTH}, FSDP2 on {CPU_WORLD} CPU ranks, fp32, "
        "AdamW).\n\n" + markdown_table(header, rows)
    )


def run(quick: bool, work: Path) -> list[Section]:
    body = llama_tables(plan_llamas()) + "\n\nConfirmed at small scale on CPU:\n\n" + confirm_on_cpu(work)
    return [Section("(j) What a memory budget fine-tunes: full against staged, planned and measured", body)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fts_dist_budget_") as scratch:
        for section in run(args.quick, Path(scratch)):
            print(f"## {section.title}\n\n{section.markdown}")


if __name__ == "__main__":
    main()
