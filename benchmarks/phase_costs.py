"""(c) Transition latency against the time to read the restored checkpoint; (d) per-phase optimizer-state bytes
and peak RSS against the ideal: AdamW's two fp32 moments (plus a step counter) per trainable parameter, and plain
Lightning training the same trainable set from the start in a fresh process."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Section, markdown_table, read_json, run_worker, save_bar_plot

WORKER = Path(__file__).parent / "workers" / "demo_phases.py"
MB = 1024 * 1024


def run(quick: bool, out: Path) -> list[Section]:
    per_class = ["--train-per-class", "16" if quick else "48"]
    run_worker(WORKER, ["--variant", "fts_dist", "--out", str(out), *per_class], world=1)
    ours = read_json(out / "phases-fts_dist.json")
    for depth in ours["phases"]:
        run_worker(WORKER, ["--variant", "plain", "--depth", depth, "--out", str(out), *per_class], world=1)
    rows = []
    for depth, t in sorted(ours["transitions"].items()):
        rows.append(
            [
                depth,
                f"{t['bytes'] / MB:.0f}",
                f"{t['seconds']:.3f}",
                f"{t['read_s']:.3f}",
                f"{t['seconds'] / t['read_s']:.2f}",
            ]
        )
    latency = markdown_table(
        ["transition to phase", "checkpoint MB", "transition s", "checkpoint read s", "ratio"], rows
    )
    latency += (
        "\n\nall-MiniLM-L6-v2 (22.6M parameters) with AdamW, one process on CPU; the transition restores "
        "the best checkpoint, thaws and adds the optimizer group. The read is `torch.load` of the same "
        "file, as warm in the page cache as at the transition. The first transition also pays a one-time cost "
        "that is not the scheduler's: Hugging Face maps the pretrained weights from their safetensors file, so "
        "the first write into them (the restore) faults in every page; a bare `load_state_dict` into a freshly "
        "loaded all-MiniLM-L6-v2 took 0.21 s the first time and 0.004 s after (measured 2026-11-25)."
    )
    rows, labels, values = [], [], []
    for depth, phase in sorted(ours["phases"].items()):
        plain = read_json(out / f"phases-plain-{depth}.json")["phases"][depth]
        ideal_opt = 8 * phase["trainable"]
        rows.append(
            [
                depth,
                f"{phase['trainable']:,.0f}",
                f"{phase['opt_bytes'] / MB:.2f}",
                f"{ideal_opt / MB:.2f}",
                f"{phase['opt_bytes'] / ideal_opt:.4f}",
                f"{phase['peak_rss'] / MB:.0f}",
                f"{plain['peak_rss'] / MB:.0f}",
                f"{phase['peak_rss'] / plain['peak_rss']:.2f}",
            ]
        )
        labels.append(f"phase {depth}")
        values.append(phase["peak_rss"] / plain["peak_rss"])
    memory = markdown_table(
        ["phase", "trainable", "optimizer state MB", "ideal MB", "ratio", "peak RSS MB", "plain peak RSS MB", "ratio"],
        rows,
    )
    memory += (
        "\n\nPeak RSS is sampled after every optimizer step. fts_dist's later phases run in a process that "
        "also trained the earlier ones (allocator caches, the restored checkpoint), so some excess over the "
        "fresh plain process is expected."
    )
    plot = save_bar_plot(out / "peak_rss_ratio.png", labels, values, "peak RSS / plain", "Peak RSS per phase")
    return [
        Section("(c) Transition latency", latency),
        Section("(d) Optimizer state and memory per phase", memory, [plot]),
    ]
