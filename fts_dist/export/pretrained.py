"""Pretrained weights into a model that is already sharded: each rank reads only the part it holds.

Fine-tuning at scale starts from a model built on the meta device and sharded before any weight exists (FSDP2's
``fully_shard`` in ``configure_model``), or partitioned as it is built (DeepSpeed ZeRO-3's ``zero.Init``).
:func:`load_pretrained` fills such a model from safetensors files (one file, a sharded export with its index, or a
Hugging Face model directory): a DTensor gets the rows (or blocks) of its local shard, a ZeRO-3 parameter the flat
range of its partition, a plain tensor the whole tensor, each read with ``safetensors``' slices, so no rank reads
the whole model. Call it in ``configure_model`` after sharding, before the optimizer is built: the optimizer's
master weights are taken from what it loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fts_dist.errors import ExportError
from fts_dist.export.names import clean_name, persistent_buffers
from fts_dist.export.shards import INDEX_NAME

_SHOWN = 10


@dataclass
class Loaded:
    """What :func:`load_pretrained` did: the tensors it filled, and the file's tensors the module has no use for."""

    loaded: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_pretrained(
    module: torch.nn.Module,
    path: str | Path,
    *,
    prefix: str = "",
    strict: bool = True,
    device: torch.device | str | None = None,
    init_buffers: Callable[[torch.nn.Module], None] | None = None,
) -> Loaded:
    """Fill every parameter and persistent buffer of ``module`` from the safetensors weights at ``path``.

    Args:
        module: the model, on the meta device (it is materialised on ``device`` first, shard by shard), or sharded
            with FSDP2, or partitioned by ZeRO-3, or whole.
        path: a ``.safetensors`` file, or a directory holding ``model.safetensors`` or a sharded export and its
            ``model.safetensors.index.json`` (``fts-dist export`` output, a Hugging Face model directory).
        prefix: prepended to the module's names to find them in the files (``model.`` ...).
        strict: raise :class:`~fts_dist.errors.ExportError` naming every tensor the files lack (else leave them).
        device: where meta tensors are materialised (default: the current CUDA device, else CPU).
        init_buffers: called with ``module`` after materialising, to compute non-persistent buffers (a rotary
            embedding's ``inv_freq``), which no checkpoint holds; required when any of them was on the meta device.
    """
    files = weight_files(Path(path))
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        unset = _non_persistent_meta_buffers(module)
        ties = _tied_parameters(module)
        module.to_empty(device=device or _default_device())
        for owner, name, source, source_name in ties:  # to_empty gives each module a parameter of its own
            if owner._parameters[name] is not source._parameters[source_name]:
                owner._parameters[name] = source._parameters[source_name]
        if unset and init_buffers is None:
            raise ExportError(
                f"non-persistent buffers {unset[:_SHOWN]} were on the meta device and no checkpoint holds them: pass "
                "init_buffers=... to compute them (for a Hugging Face rotary embedding, build it again)."
            )
        if init_buffers is not None:
            init_buffers(module)
    targets = _targets(module)
    missing = [name for name in targets if prefix + name not in files]
    if missing and strict:
        raise ExportError(
            f"'{path}' lacks {len(missing)} of the module's {len(targets)} parameters and buffers (with prefix "
            f"{prefix!r}): {missing[:_SHOWN]}. Nothing was loaded into them; check `prefix`, or pass strict=False."
        )
    done = Loaded(unexpected=sorted(set(files) - {prefix + name for name in targets}))
    with ExitStack() as stack, torch.no_grad():
        from safetensors import safe_open

        opened: dict[Path, Any] = {}
        for name, tensor in targets.items():
            if name in missing:
                continue
            file = files[prefix + name]
            if file not in opened:
                opened[file] = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            try:
                _fill(tensor, opened[file], prefix + name)
            except ExportError as err:
                raise ExportError(f"'{name}': {err}") from None
            done.loaded.append(name)
    return done


def weight_files(path: Path) -> dict[str, Path]:
    """Each tensor name in the safetensors weights at ``path`` -> the file that holds it."""
    if path.is_file():
        return dict.fromkeys(_names_in(path), path)
    index = path / INDEX_NAME
    if index.is_file():
        return {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no safetensors weights at '{path}' (a .safetensors file, or a directory of them)")
    return {name: shard for shard in shards for name in _names_in(shard)}


def _names_in(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as handle:
        return list(handle.keys())


def _targets(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers to fill, by the names ``state_dict()`` gives them (wrappers
    removed); a tensor tied to another (an output embedding that is the input one) under its first name only, as
    ``named_parameters()`` and Hugging Face's saved weights have it."""
    targets: dict[str, torch.Tensor] = {}
    seen: set[int] = set()  # by identity: meta tensors all report data_ptr() 0
    for prefix, submodule in module.named_modules():
        where = f"{prefix}." if prefix else ""
        for name, tensor in [*submodule.named_parameters(recurse=False), *persistent_buffers(submodule)]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                targets[clean_name(where + name)] = tensor
    return targets


def _tied_parameters(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module, str]]:
    """Each parameter that is another module's too (an output embedding tied to the input one): (its module,
    its name there, the module that holds it first, the name there)."""
    first: dict[int, tuple[torch.nn.Module, str]] = {}
    ties = []
    for _, submodule in module.named_modules(remove_duplicate=False):
        for name, parameter in submodule._parameters.items():
            if parameter is None:
                continue
            holder = first.setdefault(id(parameter), (submodule, name))
            if holder[0] is not submodule:
                ties.append((submodule, name, *holder))
    return ties


def _fill(tensor: torch.Tensor, handle: Any, key: str) -> None:
    """Copy the part of the stored tensor ``key`` that this rank holds into ``tensor``."""
    from torch.distributed.tensor import DTensor

    stored = handle.get_slice(key)
    shape = tuple(stored.get_shape())
    if hasattr(tensor, "ds_tensor"):  # DeepSpeed ZeRO-3: this rank's flat range of the parameter
        _fill_zero3_partition(tensor, stored, shape)
        return
    _check_shape(tuple(tensor.shape), shape)
    if isinstance(tensor, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local = tensor.to_local()
        local_shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        if local.numel():
            rows = tuple(slice(start, start + size) for start, size in zip(offset, local_shape, strict=True))
            local.copy_(stored[rows].reshape(local.shape))
        return
    tensor.copy_(handle.get_tensor(key))


def _fill_zero3_partition(parameter: Any, stored: Any, shape: tuple[int, ...]) -> None:
    import torch.distributed as dist

    _check_shape(tuple(parameter.ds_shape), shape)
    partition = parameter.ds_tensor
    size = partition.numel()
    start = dist.get_rank(group=parameter.ds_process_group) * size
    end = min(start + size, parameter.ds_numel)
    if end <= start:
        return
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    first, last = start // row, -(-end // row)  # the rows that hold the range
    rows = stored[first:last].reshape(-1)
    partition.data[: end - start].copy_(rows[start - first * row : end - first * row])


def _check_shape(held: tuple[int, ...], stored: tuple[int, ...]) -> None:
    if held != stored:
        raise ExportError(f"shape {stored} in the file, {held} in the module")


def _non_persistent_meta_buffers(module: torch.nn.Module) -> list[str]:
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, submodule in module.named_modules()
        for name, buffer in submodule.named_buffers(recurse=False)
        if buffer is not None and buffer.is_meta and name in submodule._non_persistent_buffers_set
    ]


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
