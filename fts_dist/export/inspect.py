"""``fts-dist ckpt inspect``: what a checkpoint is and holds, read from its metadata (no weights are loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fts_dist.export.names import scheduler_state
from fts_dist.export.sources import DCPSource, DeepSpeedSource, open_checkpoint


@dataclass
class Summary:
    path: Path
    kind: str
    strategy: str
    world_size: int | None
    epoch: int | None
    global_step: int | None
    depth: int | None
    phases: int | None
    trainable: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0
    size_bytes: int = 0

    def describe(self) -> str:
        lines = [
            f"checkpoint   {self.path}",
            f"kind         {self.kind} ({self.strategy})",
            f"world size   {self.world_size if self.world_size is not None else 'not recorded'}",
            f"epoch, step  {self.epoch}, {self.global_step}",
            f"size         {_human(self.size_bytes)} on disk; weights: {self.tensors} tensors, "
            f"{self.parameters:,} values",
        ]
        if self.depth is None:
            lines.append("phase        not recorded (saved without FinetuningScheduler)")
            return "\n".join(lines)
        lines.append(f"phase        {self.depth} of {self.phases - 1 if self.phases else '?'}")
        lines.append(f"trainable    {len(self.trainable)} tensors: {', '.join(self.trainable[:8])}"
                     + (" ..." if len(self.trainable) > 8 else ""))  # fmt: skip
        for number, group in enumerate(self.groups):
            settings = ", ".join(f"{k}={v}" for k, v in group.items() if k in ("lr", "initial_lr", "weight_decay"))
            lines.append(f"group {number}      {settings}")
        return "\n".join(lines)


def inspect_checkpoint(path: str | Path) -> Summary:
    """The kind, strategy, world size, epoch and step, phase and depth, trainable set, optimizer groups and size of
    the checkpoint at ``path``."""
    source = open_checkpoint(path)
    metadata = source.metadata()
    state = scheduler_state(metadata) or {}
    depth = state.get("depth")
    phases = state.get("schedule") or {}
    trainable = [name for d, phase in sorted(_numbered(phases).items()) if depth is not None and d <= depth
                 for name in phase.get("params", [])]  # fmt: skip
    rank_states = metadata.get("fts_dist_rank_states") or {}
    return Summary(
        path=Path(path),
        kind=source.kind,
        strategy=_strategy(source),
        world_size=rank_states.get("world_size", getattr(source, "world_size", None)),
        epoch=metadata.get("epoch"),
        global_step=metadata.get("global_step"),
        depth=depth,
        phases=len(phases) if phases else None,
        trainable=trainable,
        groups=list(state.get("optimizer_groups") or []),
        tensors=len(source.tensors),
        parameters=sum(info.numel for info in source.tensors.values()),
        size_bytes=sum(f.stat().st_size for f in source.files()),
    )


def _strategy(source: Any) -> str:
    if isinstance(source, DCPSource):
        return source.strategy
    if isinstance(source, DeepSpeedSource):
        return f"DeepSpeed ZeRO-{source.zero_stage}"
    return "one file: DDP, one device, or a whole-model FSDP save"


def _numbered(phases: dict[Any, Any]) -> dict[int, dict[str, Any]]:
    return {int(k): v for k, v in phases.items()}


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"
