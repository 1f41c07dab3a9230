"""``fts-dist schedule gen | validate | show | plan``: schedule files checked and explained without training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fts_dist.cli.objects import build_model
from fts_dist.errors import FTSConfigError
from fts_dist.gen import gen_block_schedule, gen_ft_schedule
from fts_dist.schedule import Schedule, dump_schedule, generate_block_schedule, load_schedule, schedule_file_name


def plan(args: Any, schedule: Any = None, budget: str | None = None) -> Any:
    """``fts-dist schedule plan``: the model built on the meta device, then :func:`fts_dist.memory.plan_memory`."""
    from fts_dist.memory import meta_device, plan_memory  # imports torch

    with meta_device():
        model = build_model(args.model, args.init_args)
        batch = _batch(args.batch_shape, args.batch_dtype) if args.batch_shape else None
    units = [u for u in (args.units or "").split(",") if u]
    zero = _zero_config(args.deepspeed_config) if args.deepspeed_config else {}
    offload = args.offload or (zero.get("offload_optimizer") or {}).get("device") == "cpu"
    return plan_memory(
        args.schedule if schedule is None else schedule, model, args.strategy, args.world_size,
        zero_stage=args.zero_stage or zero.get("stage"), offload=offload, precision=args.precision,
        optimizer=args.optimizer, budget=budget or getattr(args, "budget", None), unit_classes=units, batch=batch,
        zero=zero or None,
    )  # fmt: skip


def _batch(shape: str, dtype_name: str) -> Any:
    """``8x2048`` (or ``8,2048``) and ``int64`` as an empty tensor (built on the meta device)."""
    import torch

    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise FTSConfigError(f"--batch-dtype {dtype_name!r} is not a torch dtype; write e.g. int64 or float32.")
    try:
        sizes = [int(size) for size in shape.replace(",", "x").split("x")]
    except ValueError:
        raise FTSConfigError(f"--batch-shape {shape!r}: write the sizes as e.g. 8x2048.", key="batch_shape") from None
    return torch.empty(sizes, dtype=dtype)


def _zero_config(path: str) -> dict[str, Any]:
    """The ``zero_optimization`` section of a DeepSpeed config file."""
    import json

    try:
        section = json.loads(Path(path).read_text()).get("zero_optimization", {})
    except (OSError, ValueError) as err:
        raise FTSConfigError(f"--deepspeed-config {path}: {err}", key="deepspeed_config") from err
    return dict(section)


def check_budget(args: Any) -> list[str]:
    """``schedule validate --memory-budget``: one error per phase that does not fit."""
    from fts_dist.memory import over_budget

    if not (args.strategy and args.world_size):
        return ["--memory-budget needs --strategy and --world-size"]
    return over_budget(plan(args, budget=args.memory_budget))


def generate(
    model_spec: str,
    init_args: str | None,
    out: str | None,
    block_options: dict[str, Any] | None = None,
    budget_args: Any = None,
) -> Path:
    """Write the implicit schedule of the LightningModule ``model_spec`` (its block-wise schedule with
    ``block_options``, the keyword arguments of :func:`gen_block_schedule`) to ``out`` (default: the current
    directory, under the original project's file name). With ``budget_args`` (``--memory-budget`` and the plan's
    options), the block-wise schedule stops at its deepest phase that fits."""
    model = build_model(model_spec, init_args)
    directory, name = (".", None) if out is None else (Path(out).parent, Path(out).name)
    if block_options is None:
        return gen_ft_schedule(model, directory, file_name=name)
    if budget_args is None:
        return gen_block_schedule(model, directory, file_name=name, **block_options)
    from fts_dist.memory import fit_to_budget  # imports torch

    names = [param_name for param_name, _ in model.named_parameters()]
    schedule = generate_block_schedule(names, **block_options).to_dict()
    fitted, note = fit_to_budget(schedule, plan(budget_args, schedule, budget_args.memory_budget))  # raises first
    print(f"memory budget: {note}")
    return dump_schedule(
        Schedule.from_dict(fitted), Path(directory) / (name or schedule_file_name(type(model).__name__))
    )


@dataclass
class Validation:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    schedule: Schedule | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # parameter name -> numel


def validate(
    schedule_path: str, model_spec: str, init_args: str | None, strategy: str | None, epoch_transitions_only: bool
) -> Validation:
    """Every check the callback makes before training, without a Trainer: file, structure, names, strategy."""
    result = Validation()
    try:
        model = build_model(model_spec, init_args)
        result.sizes = {name: param.numel() for name, param in model.named_parameters()}
        resolved = load_schedule(schedule_path, list(result.sizes), epoch_transitions_only=epoch_transitions_only)
        result.schedule = resolved.schedule
        if any(phase.new_optimizer or phase.new_lr_scheduler for phase in resolved.schedule.phases):
            from fts_dist.optim.reinit import check_new_lr_schedulers, check_reinit_classes  # imports torch

            check_reinit_classes(resolved.schedule)
            check_new_lr_schedulers(resolved.schedule)  # phase 0 taken as one group (or as init_pg_lrs says)
        if resolved.unscheduled:
            unscheduled = list(resolved.unscheduled)
            result.warnings.append(f"{len(unscheduled)} parameter(s) are in no phase and stay frozen: {unscheduled}")
    except FTSConfigError as err:
        result.errors.append(str(err))
    if strategy:
        from fts_dist.adapters import check_strategy_supported  # imports Lightning: only when asked

        try:
            check_strategy_supported(strategy)
        except FTSConfigError as err:
            result.errors.append(str(err))
    return result


def phase_rows(validation: Validation) -> list[list[str]]:
    assert validation.schedule is not None
    rows = []
    for depth, phase in enumerate(validation.schedule.phases):
        numel = sum(validation.sizes[name] for name in phase.params)
        names = ", ".join(phase.params[:3]) + (f", ... (+{len(phase.params) - 3})" if len(phase.params) > 3 else "")
        lr = (
            "optimizer's"
            if depth == 0 and phase.lr is None
            else ("base_max_lr" if phase.lr is None else f"{phase.lr:g}")
        )
        epoch = "early stopping" if phase.max_transition_epoch < 0 else str(phase.max_transition_epoch)
        if phase.scale_lrs is not None:
            lr += f", earlier groups x{phase.scale_lrs:g}"
        if phase.new_optimizer is not None:
            lr += f"; new {phase.new_optimizer.class_name}"
        if phase.new_lr_scheduler is not None:
            lr += f"; new {phase.new_lr_scheduler.class_name}"
        if phase.freeze:
            names += f"; freezes {len(phase.freeze)} again: " + ", ".join(phase.freeze[:2])
        rows.append([str(depth), str(len(phase.params)), f"{numel:,}", lr, epoch, names])
    return rows


def format_table(rows: list[list[str]]) -> str:
    header = ["phase", "tensors", "parameters", "lr", "max_transition_epoch", "params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def plot_timeline(validation: Validation, out: str) -> Path:
    """Phase bars over epochs; phases that early stopping ends are drawn one epoch long and hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert validation.schedule is not None
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(validation.schedule) + 1.2))
    start = 0
    for depth, phase in enumerate(validation.schedule.phases):
        end = phase.max_transition_epoch if phase.max_transition_epoch > start else start + 1
        hatch = "//" if phase.max_transition_epoch < 0 else None
        ax.barh(depth, end - start, left=start, hatch=hatch, color="tab:blue", edgecolor="white")
        trainable = sum(validation.sizes[n] for p in validation.schedule.phases[: depth + 1] for n in p.params)
        ax.text(end + 0.05, depth, f"{trainable:,} trainable", va="center", fontsize=8)
        start = end
    ax.set_yticks(range(len(validation.schedule)), [f"phase {d}" for d in range(len(validation.schedule))])
    ax.invert_yaxis()
    ax.set_xlabel("epoch")
    ax.set_title("Fine-tuning schedule (hatched: ends by early stopping)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
