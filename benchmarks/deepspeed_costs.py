"""(g) DeepSpeed: fp32 masters plus optimizer state per rank and phase against the ideal, for ZeRO stages 1-3;
transition latency; step time against DeepSpeed training the same trainable set straight from initialize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Section, markdown_table, read_json, run_worker

WORKER = Path(__file__).parent / "workers" / "deepspeed_phases.py"
WORLD = 2
MB = 1024 * 1024
STAGES = (1, 2, 3)


def run(quick: bool, out: Path) -> list[Section]:
    per_class = ["--train-per-class", "16" if quick else "64"]
    ours: dict[int, list[dict[str, Any]]] = {}
    for stage in STAGES:
        work = out / f"stage{stage}"
        run_worker(WORKER, ["--variant", "fts_dist", "--stage", str(stage), "--out", str(work), *per_class], WORLD)
        ours[stage] = [read_json(work / f"deepspeed-fts_dist-rank{r}.json") for r in range(WORLD)]
    plain: dict[str, dict[str, Any]] = {}
    for depth in sorted(ours[2][0]["step_s"]):
        work = out / f"plain{depth}"
        run_worker(WORKER, ["--variant", "plain", "--depth", depth, "--out", str(work), *per_class], WORLD)
        plain[depth] = read_json(work / f"deepspeed-plain-{depth}-rank0.json")
    return [Section("(g) DeepSpeed: optimizer state per rank, transitions, step time", tables(ours, plain))]


def tables(ours: dict[int, list[dict[str, Any]]], plain: dict[str, dict[str, Any]]) -> str:
    memory, latency = [], []
    for stage, ranks in ours.items():
        for rank, result in enumerate(ranks):
            for depth, phase in sorted(result["phases"].items()):
                ideal = phase["trainable"] * 12 / WORLD
                memory.append([stage, depth, rank, f"{phase['trainable']:,}", f"{phase['state'] / MB:.2f}",
                               f"{ideal / MB:.2f}", f"{phase['state'] / ideal:.4f}"])  # fmt: skip
        transitions = ranks[0]["transitions"]
        latency.append([stage, *(f"{transitions[d]:.2f}" for d in sorted(transitions))])
    steps = []
    for depth, baseline in sorted(plain.items()):
        fts, base = ours[2][0]["step_s"][depth], baseline["step_s"][depth]
        steps.append([depth, f"{fts * 1000:.0f}", f"{base * 1000:.0f}", f"{fts / base:.3f}"])
    header = ["ZeRO stage", "phase", "rank", "trainable", "masters + AdamW state MB", "ideal MB", "ratio"]
    return (
        markdown_table(header, memory)
        + "\n\nall-MiniLM-L6-v2 with AdamW under `fts_dist.DeepSpeedStrategy`, 2 ranks on CPU (gloo), section (d)'s "
        "3-phase schedule, one epoch each. Bytes of fp32 masters plus Adam's two moments this rank holds (step "
        "counters aside); ideal: 12 bytes per trainable parameter / world. Frozen parameters hold none.\n\n"
        + markdown_table(["ZeRO stage", "transition to 1 s", "transition to 2 s"], latency)
        + "\n\nA transition rebuilds the engine's ZeRO optimizer for the new trainable set, carrying every earlier "
        "group's masters and state over (`restore_best=False` here: the rebuild alone).\n\n"
        + markdown_table(["phase", "fts_dist step ms", "DeepSpeed from initialize step ms", "ratio"], steps)
        + "\n\nZeRO-2, rank 0, median step time over the phase's epoch (the first two steps left out); the baseline "
        "trains the same trainable set with DeepSpeed straight from `deepspeed.initialize`, in a fresh process."
    )
