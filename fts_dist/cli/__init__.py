"""The ``fts-dist`` command line: ``demo``, ``fit`` (LightningCLI), ``schedule gen | validate | show | plan``,
``export`` and ``ckpt inspect``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fts_dist._version import __version__
from fts_dist.cli.demo_cmd import add_demo_parser, run_demo_command
from fts_dist.cli.export_cmds import add_export_parsers, run_export_command
from fts_dist.errors import FTSConfigError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fts-dist", description="Distributed-first scheduled fine-tuning for PyTorch Lightning."
    )
    parser.add_argument("--version", action="version", version=f"fts-dist {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_parser(commands)
    commands.add_parser(
        "fit",
        add_help=False,
        help="train from a LightningCLI config: fts-dist fit --config cfg.yaml [--trainer.max_epochs=N ...] "
        "(see fts-dist fit --help)",
    )
    schedule = commands.add_parser("schedule", help="generate, validate or show a schedule without training")
    actions = schedule.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = actions.add_parser("gen", help="write the implicit (or, with --blocks, the block-wise) schedule of a module")
    gen.add_argument("model", help="the LightningModule as package.module:Class")
    gen.add_argument("--init-args", help="its constructor arguments as a JSON object")
    gen.add_argument("--out", help="where to write it (default: ./<Class>_ft_schedule.yaml)")
    blocks = gen.add_argument_group("block-wise schedules (--blocks)")
    blocks.add_argument(
        "--blocks",
        action="store_true",
        help="the head first, then the model's repeated blocks from the top (found by name), then the stem",
    )
    blocks.add_argument("--blocks-per-phase", type=int, default=1, metavar="K", help="blocks thawed per phase")
    blocks.add_argument("--lr", type=float, help="learning rate of phase 1 (default: the callback's base_max_lr)")
    blocks.add_argument("--lr-decay", type=float, default=1.0, help="each deeper phase's lr over the one above")
    blocks.add_argument("--epochs-per-phase", type=int, metavar="N", help="end phase d by epoch (d + 1) * N")
    add_plan_options(gen)
    for name, help_text in (
        ("validate", "every check the callback makes before training; exit 0 when valid, 1 with the errors"),
        ("show", "a table of the phases: parameters, counts, lr, epochs; --plot draws the timeline"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("schedule", help="the schedule YAML file")
        action.add_argument("--model", required=True, help="the LightningModule as package.module:Class")
        action.add_argument("--init-args", help="its constructor arguments as a JSON object")
        action.add_argument("--epoch-transitions-only", action="store_true", help="as the callback's argument")
        if name == "validate":
            action.add_argument("--strategy", help="a Lightning strategy name (ddp, fsdp, deepspeed, ...) to check")
            add_plan_options(action)
        else:
            action.add_argument("--plot", help="also draw the phase timeline to this PNG file")
    _add_plan_parser(actions)
    add_export_parsers(commands)
    return parser


def _add_plan_parser(actions: Any) -> None:
    plan = actions.add_parser("plan", help="bytes per rank of every phase, planned on the meta device")
    plan.add_argument("schedule", help="the schedule YAML file")
    plan.add_argument("--model", required=True, help="the LightningModule (or nn.Module) as package.module:Class")
    plan.add_argument("--init-args", help="its constructor arguments as a JSON object")
    plan.add_argument("--budget", help="memory per rank, e.g. 80GiB: name the binding phase and its headroom")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_plan_options(plan, required=True)


def add_plan_options(parser: Any, required: bool = False) -> None:
    """What a memory plan needs besides the schedule and the model."""
    group = parser.add_argument_group("memory plan")
    if not required:
        group.add_argument("--memory-budget", metavar="SIZE", help="memory per rank, e.g. 80GiB (with --world-size)")
    if not any(action.dest == "strategy" for action in parser._actions):
        group.add_argument("--strategy", required=required, help="ddp, fsdp2, fsdp1 or deepspeed")
    group.add_argument("--zero-stage", type=int, choices=[1, 2, 3], help="with --strategy deepspeed")
    group.add_argument("--offload", action="store_true", help="ZeRO optimizer offload to host memory")
    group.add_argument("--world-size", type=int, required=required)
    group.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "bf16-true"])
    group.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"])
    group.add_argument("--units", help="comma-separated module classes FSDP wraps (default: the repeated blocks)")
    group.add_argument(
        "--batch-shape", metavar="SHAPE", help="one rank's micro-batch, e.g. 8x2048: trace each phase's activations"
    )
    group.add_argument("--batch-dtype", default="float32", help="the batch's dtype (int64 for token ids)")
    group.add_argument(
        "--deepspeed-config", metavar="JSON", help="a DeepSpeed config: its zero_optimization buckets (and stage)"
    )


def _run_schedule_command(args: argparse.Namespace) -> int:
    from fts_dist.cli import schedule_cmds

    if args.action == "plan":
        plan = schedule_cmds.plan(args)
        print(plan.to_json() if args.json else plan.describe())
        return 0 if plan.budget is None or plan.fits(plan.binding.phase) else 2
    if args.action == "gen":
        options = dict(
            blocks_per_phase=args.blocks_per_phase,
            lr=args.lr,
            lr_decay=args.lr_decay,
            epochs_per_phase=args.epochs_per_phase,
        )
        budget = args.memory_budget
        if budget and not (args.blocks and args.strategy and args.world_size):
            print("error: --memory-budget needs --blocks, --strategy and --world-size", file=sys.stderr)
            return 1
        written = schedule_cmds.generate(
            args.model, args.init_args, args.out, options if args.blocks else None, args if budget else None
        )
        print(f"wrote {written}")
        return 0
    strategy = getattr(args, "strategy", None)
    result = schedule_cmds.validate(args.schedule, args.model, args.init_args, strategy, args.epoch_transitions_only)
    if getattr(args, "memory_budget", None) and not result.errors:
        result.errors += schedule_cmds.check_budget(args)
    for warning in result.warnings:
        print(f"warning: {warning}")
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if result.errors:
        return 1
    assert result.schedule is not None
    if args.action == "validate":
        scheduled = sum(len(p.params) for p in result.schedule.phases)
        print(f"valid: {len(result.schedule)} phases, {scheduled} parameter tensors scheduled")
        return 0
    print(schedule_cmds.format_table(schedule_cmds.phase_rows(result)))
    if args.plot:
        print(f"wrote {schedule_cmds.plot_timeline(result, args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fts-dist`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["fit"]:  # LightningCLI parses its own arguments
            from fts_dist.cli.fit import run_fit

            run_fit(argv[1:])
            return 0
        args = _build_parser().parse_args(argv)
        if args.command == "demo":
            return run_demo_command(args)
        if args.command == "schedule":
            return _run_schedule_command(args)
        if args.command in ("export", "ckpt"):
            return run_export_command(args)
    except FTSConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _build_parser().print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
