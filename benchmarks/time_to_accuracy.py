"""(e) Time-to-accuracy on the demo task: fts_dist's explicit, generated block-wise and implicit schedules against
head-only training, full fine-tuning and finetuning-scheduler 2.14.1. The explicit schedule runs first; its wall
time is the budget the baselines and the implicit schedule get (finetuning-scheduler runs the same schedule, and
the block-wise one its own, to their end within the same 5 epochs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from benchmarks.common import Section, markdown_table, median, read_json, run_worker

WORKER = Path(__file__).parent / "workers" / "demo_tta.py"
TARGET = 0.90


def variants() -> list[str]:
    found = importlib.util.find_spec("finetuning_scheduler") is not None
    return ["explicit", "blocks", "implicit", "head-only", "full", *(["finetuning-scheduler"] if found else [])]


def first_time_at(points: list[list[float]], target: float) -> float | None:
    return next((t for t, acc in points if acc >= target), None)


def save_curves(path: Path, curves: dict[str, list[list[float]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, points in curves.items():
        ax.plot([t for t, _ in points], [a for _, a in points], marker="o", label=name)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Time to accuracy, BBC News, all-MiniLM-L6-v2 (seed 0)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(quick: bool, out: Path) -> list[Section]:
    seeds = [0] if quick else [0, 1, 2]
    runs: dict[str, list[list[list[float]]]] = {v: [] for v in variants()}
    for seed in seeds:
        common = ["--seed", str(seed), "--out", str(out), *(["--quick"] if quick else [])]
        run_worker(WORKER, ["--variant", "explicit", *common], world=1)
        explicit = read_json(out / f"tta-explicit-s{seed}.json")
        runs["explicit"].append(explicit)
        budget = explicit[-1][0]
        for variant in variants()[1:]:
            # finetuning-scheduler and the block-wise schedule run their schedules to their own end, as explicit
            extra = [] if variant in ("finetuning-scheduler", "blocks") else ["--budget", f"{budget:.1f}"]
            run_worker(WORKER, ["--variant", variant, *common, *extra], world=1)
            runs[variant].append(read_json(out / f"tta-{variant}-s{seed}.json"))
    rows = []
    for variant, per_seed in runs.items():
        reached = [first_time_at(p, TARGET) for p in per_seed]
        reach = "never" if None in reached else f"{median([r for r in reached if r is not None]):.0f}"
        finals = [p[-1][1] for p in per_seed]
        rows.append(
            [
                variant,
                f"{median([max(a for _, a in p) for p in per_seed]):.3f}",
                f"{median(finals):.3f}",
                " / ".join(f"{a:.3f}" for a in finals),
                reach,
                f"{median([p[-1][0] for p in per_seed]):.0f}",
            ]
        )
    header = ["run", "best val acc", "final val acc", "final, per seed", f"s to {TARGET:.2f}", "wall s"]
    body = markdown_table(header, rows)
    body += (
        f"\n\nMedians over seeds {seeds}; one process, CPU; 200 validation articles, so one article is 0.005. "
        "Head-only and full fine-tuning (AdamW, lr 1e-3 and 5e-5) and the implicit schedule get the explicit "
        "schedule's wall time as their budget. `blocks` is the schedule `gen_block_schedule` writes for the demo "
        "model (`fts-dist demo --schedule blocks`: head; encoder layers 5-4, 3-2, 1-0; embeddings; lr 5e-5, 0.7 times "
        "per phase deeper; one epoch a phase at most), within the explicit schedule's 5 epochs."
    )
    plot = save_curves(out / "time_to_accuracy.png", {v: p[0] for v, p in runs.items()})
    return [Section("(e) Time to accuracy on the demo task", body, [plot])]
