"""Single-GPU / CPU fallback (pure logic): fit a multi-device config onto the devices this machine has."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fts_dist.errors import FTSConfigError

GPU_ONLY_STRATEGIES = ("deepspeed", "fsdp", "model_parallel")
GPU_ONLY_PRECISIONS = ("16-mixed", "16", 16, "16-true", "transformer-engine")


@dataclass(frozen=True)
class DeviceRequest:
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = None


def strategy_name(strategy: Any) -> str:
    """A short name for a strategy given as a registry name, a class path config or an instance."""
    if isinstance(strategy, str):
        return strategy.lower()
    if isinstance(strategy, dict):
        strategy = strategy.get("class_path", "")
    elif hasattr(strategy, "class_path"):  # a jsonargparse namespace from a config file
        strategy = strategy.class_path
    else:
        strategy = type(strategy).__name__
    name = str(strategy).rsplit(".", 1)[-1].lower().removesuffix("strategy")
    return {"fsdp2": "fsdp", "modelparallel": "model_parallel"}.get(name, name)


def requested_count(devices: Any) -> int | None:
    """Devices asked for per node: an int, a list of ids, a "N" or "0,1" string; None for auto/-1 (all)."""
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else None


def plan_fallback(request: DeviceRequest, gpus: int, launched: bool) -> tuple[DeviceRequest, str | None]:
    """The request to run with and a one-line notice of what changed (None when nothing did).

    Launched jobs (torchrun, SLURM) keep their request: the launcher owns the device count. A request for several
    GPUs, or several nodes, on a machine with fewer runs on one device with the single-device adapter; a strategy
    or precision that cannot run there raises :class:`FTSConfigError`.
    """
    if launched or request.accelerator == "cpu":
        return request, None
    wants_gpu = request.accelerator in ("gpu", "cuda", "auto")
    count = requested_count(request.devices)
    fits = count is None or (count <= max(gpus, 1) and (gpus > 0 or count == 1))
    if wants_gpu and fits and request.num_nodes == 1 and (gpus > 0 or request.accelerator == "auto"):
        return request, None
    target = "gpu" if gpus > 0 else "cpu"
    name = strategy_name(request.strategy)
    if target == "cpu" and name in GPU_ONLY_STRATEGIES:
        raise FTSConfigError(
            f"strategy {name!r} needs CUDA GPUs and this machine has none: run it on a GPU node, or set "
            "trainer.strategy=ddp (or auto) to develop here.",
            key="strategy",
        )
    if target == "cpu" and request.precision in GPU_ONLY_PRECISIONS:
        raise FTSConfigError(
            f"precision {request.precision!r} needs a GPU and this machine has none: use bf16-mixed or 32-true on CPU.",
            key="precision",
        )
    planned = replace(request, accelerator=target, devices=1, num_nodes=1, strategy="auto")
    notice = (
        f"fts_dist: fallback: asked for accelerator={request.accelerator} devices={request.devices} "
        f"num_nodes={request.num_nodes} strategy={name}; this machine has {gpus} GPU(s), so running on 1 "
        f"{target} device with the single-device adapter (same schedule)."
    )
    return planned, notice


def plan_launched(
    request: DeviceRequest, world_size: int, local_world_size: int, gpus: int
) -> tuple[DeviceRequest, str | None]:
    """Under a launcher the processes are already there: one device per local process, nodes from the world
    size; with no GPU on the node, CPU processes (gloo)."""
    nodes = max(1, world_size // max(local_world_size, 1))
    accelerator = request.accelerator if gpus > 0 else "cpu"
    planned = replace(request, accelerator=accelerator, devices=local_world_size, num_nodes=nodes)
    if accelerator == "cpu" and strategy_name(request.strategy) in GPU_ONLY_STRATEGIES:
        raise FTSConfigError(
            f"strategy {strategy_name(request.strategy)!r} needs CUDA GPUs and this node has none.", key="strategy"
        )
    changed = (planned.accelerator, str(planned.devices), planned.num_nodes) != (
        request.accelerator, str(request.devices), request.num_nodes,
    )  # fmt: skip
    if not changed or (request.accelerator == "auto" and str(request.devices) == "auto" and gpus == 0 and nodes == 1):
        return planned, None
    notice = (
        f"fts_dist: launched with {world_size} process(es) on {nodes} node(s): using accelerator={accelerator} "
        f"devices={local_world_size} num_nodes={nodes} (config asked {request.accelerator}, {request.devices}, "
        f"{request.num_nodes})."
    )
    return planned, notice
