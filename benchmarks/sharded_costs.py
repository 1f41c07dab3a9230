"""(f) Sharded fine-tuning: what each rank holds per phase under FSDP2 against the ideal, with DDP beside it; what
each rank reads at a transition's restore against the whole checkpoint; transition latency against the shard read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Section, markdown_table, median, read_json, run_worker

WORKER = Path(__file__).parent / "workers" / "sharded_phases.py"
WORLD = 2
MB = 1024 * 1024
ADAMW_BYTES = 8  # two fp32 moments per trainable element (the per-tensor step counters are not counted)


def run(quick: bool, out: Path) -> list[Section]:
    repeats = 1 if quick else 3
    runs: dict[str, list[list[dict[str, Any]]]] = {"fsdp2": [], "ddp": []}
    for repeat in range(repeats):
        for strategy in runs:
            work = out / f"{strategy}-{repeat}"
            run_worker(WORKER, ["--strategy", strategy, "--out", str(work)], world=WORLD)
            runs[strategy].append([read_json(work / f"sharded-{strategy}-rank{r}.json") for r in range(WORLD)])
    return [
        Section("(f) FSDP2: memory per rank and sharded restores", memory_table(runs) + "\n\n" + restore_table(runs))
    ]


def ratio(value: float, ideal: float) -> str:
    return f"{value / MB:.2f} ({value / ideal:.3f})"


def memory_table(runs: dict[str, list[list[dict[str, Any]]]]) -> str:
    rows = []
    for strategy, repeats in runs.items():
        for rank, result in enumerate(repeats[0]):  # bytes held do not vary between repeats
            for depth, phase in sorted(result["phases"].items()):
                every, trainable = phase["all_numel"], phase["trainable_numel"]
                rows.append(
                    [
                        strategy,
                        depth,
                        rank,
                        f"{trainable:,}",
                        ratio(phase["params"], every * 4 / WORLD),
                        ratio(phase["grads"], trainable * 4 / WORLD),
                        ratio(phase["optimizer"], trainable * ADAMW_BYTES / WORLD),
                    ]
                )
    header = [
        "strategy",
        "phase",
        "rank",
        "trainable",
        "parameters MB (/ideal)",
        "gradients MB (/ideal)",
        "AdamW state MB (/ideal)",
    ]
    return (
        markdown_table(header, rows)
        + "\n\nall-MiniLM-L6-v2 (22.6M parameters) fine-tuned in three phases (head; top two encoder layers; the "
        "rest), one epoch each, AdamW, 2 ranks on CPU (gloo); under FSDP2 every encoder layer, the embeddings and the "
        "head are units. Bytes this rank holds right before each optimizer step (DTensor shards count their local "
        "part; unsharded copies that exist only during forward and backward are not counted). The ideal divides by the "
        "world size: every parameter for the parameters, the phase's trainable ones for gradients and optimizer state "
        "(8 bytes each: two fp32 moments; the step counters, one scalar per tensor, come on top). DDP keeps everything "
        "whole on every rank: 2.0 against the same ideal."
    )


def restore_table(runs: dict[str, list[list[dict[str, Any]]]]) -> str:
    rows = []
    for strategy, repeats in runs.items():
        for rank in range(WORLD):
            for depth in sorted(repeats[0][rank]["transitions"]):
                samples = [r[rank]["transitions"][depth] for r in repeats]
                first = samples[0]
                whole = first["checkpoint_bytes"]
                seconds = median([s["seconds"] for s in samples])
                dcp = median([s["dcp_read_s"] for s in samples])
                plain = median([s["shard_read_s"] for s in samples])
                rows.append(
                    [
                        strategy,
                        depth,
                        rank,
                        f"{whole / MB:.1f}",
                        f"{first['restore_bytes'] / MB:.1f}",
                        f"{first['restore_bytes'] / (whole / WORLD):.3f}",
                        f"{seconds:.3f}",
                        f"{dcp:.3f}" if dcp else "-",
                        f"{seconds / dcp:.2f}" if dcp else "-",
                        f"{plain:.3f}",
                        f"{seconds / plain:.1f}",
                    ]
                )
    header = [
        "strategy", "transition to", "rank", "checkpoint MB", "read MB", "read / (checkpoint / world)",
        "transition s", "shard load s", "ratio", "plain file read s", "ratio",
    ]  # fmt: skip
    return (
        markdown_table(header, rows) + "\n\n"
        "Each transition restores the best checkpoint (the previous phase's). Read MB: every byte the rank "
        "read during the restore (`/proc/self/io` rchar, so metadata and the whole-file reads of DDP count "
        "too). Shard load: the time `torch.distributed.checkpoint` spent loading this rank's shards inside "
        "the transition (weights and optimizer state in one load, into the live shards). Plain file read: the"
        " rank's own shard file (DDP: the whole checkpoint) read whole with a plain read, from the page "
        "cache, a lower bound no loader reaches. Timings are medians over the repeats."
    )
