"""Single-GPU / CPU fallback (pure logic): fit a multi-device config onto the devices this machine has.

Which strategy needs a GPU is not written here: callers pass ``needs_gpu``, and ``fts-dist fit`` passes the adapter
registry's :func:`~fts_dist.adapters.strategy_needs_gpu`, the one place that knows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fts_dist.errors import FTSConfigError

NeedsGpu = Callable[[Any], bool]  # a strategy as configured (name, class path, instance) -> needs CUDA?
_GPU_ONLY_PRECISIONS = ("16-mixed", "16", 16, "16-true", "transformer-engine")


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


def plan_fallback(request: DeviceRequest, gpus: int, needs_gpu: NeedsGpu) -> tuple[DeviceRequest, str | None]:
    """The request to run with and a one-line notice of what changed (None when nothing did).

    For a plain run (launched jobs go through :func:`plan_launched`). A request for several
    GPUs, or several nodes, on a machine with fewer runs on one device with the single-device adapter; a strategy
    or precision that cannot run there raises :class:`FTSConfigError`.
    """
    if request.accelerator == "cpu":
        return request, None
    wants_gpu = request.accelerator in ("gpu", "cuda", "auto")
    count = requested_count(request.devices)
    fits = count is None or (count <= max(gpus, 1) and (gpus > 0 or count == 1))
    if wants_gpu and fits and request.num_nodes == 1 and (gpus > 0 or request.accelerator == "auto"):
        return request, None
    target = "gpu" if gpus > 0 else "cpu"
    name = strategy_name(request.strategy)
    if target == "cpu" and needs_gpu(request.strategy):
        raise _needs_gpu_error(name, "this machine")
    if target == "cpu" and request.precision in _GPU_ONLY_PRECISIONS:
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
    request: DeviceRequest, world_size: int, local_world_size: int, gpus: int, needs_gpu: NeedsGpu
) -> tuple[DeviceRequest, str | None]:
    """Under a launcher the processes are already there: one device per local process, nodes from the world
    size; with no GPU on the node, CPU processes (gloo)."""
    nodes = max(1, world_size // max(local_world_size, 1))
    accelerator = request.accelerator if gpus > 0 else "cpu"
    planned = replace(request, accelerator=accelerator, devices=local_world_size, num_nodes=nodes)
    if accelerator == "cpu" and needs_gpu(request.strategy):
        raise _needs_gpu_error(strategy_name(request.strategy), "this node")
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


def under_a_launcher(env: Mapping[str, str]) -> bool:
    """A launcher (torchrun, ...) started several processes: WORLD_SIZE > 1. A single torchrun process gets the
    same fallback as a plain run."""
    return int(env.get("WORLD_SIZE", "1")) > 1


def plan_devices(
    request: DeviceRequest, env: Mapping[str, str], gpus: int, needs_gpu: NeedsGpu
) -> tuple[DeviceRequest, str | None]:
    """The request to run with on this machine: shaped by the launcher when one started several processes
    (:func:`plan_launched`), else fitted to the devices at hand (:func:`plan_fallback`); and the notice to print."""
    if under_a_launcher(env):
        world = int(env["WORLD_SIZE"])
        return plan_launched(request, world, int(env.get("LOCAL_WORLD_SIZE", world)), gpus, needs_gpu)
    return plan_fallback(request, gpus, needs_gpu)


def _needs_gpu_error(name: str, where: str) -> FTSConfigError:
    return FTSConfigError(
        f"strategy {name!r} needs CUDA GPUs and {where} has none: run it on a GPU node, or pick a strategy that "
        "runs on CPU to develop here (ddp, ModelParallelStrategy for FSDP2, fts_dist.FSDPStrategy for FSDP1, "
        "fts_dist.DeepSpeedStrategy).",
        key="strategy",
    )
