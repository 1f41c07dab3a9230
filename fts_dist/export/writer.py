"""``fts-dist export``: a checkpoint's model weights to safetensors (sharded, with an index) or torch's format.

The weights are read and written a shard at a time (:mod:`fts_dist.export.shards`), never the optimizer state, so
memory stays near the largest shard however large the checkpoint. Before anything is written, the names are
checked against those the checkpoint recorded (:mod:`fts_dist.export.names`): a parameter frozen the whole run or
thawed late that the checkpoint lacks is an :class:`~fts_dist.errors.ExportError` naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fts_dist.errors import ExportError
from fts_dist.export.names import recorded_model_names
from fts_dist.export.shards import INDEX_NAME, index, parse_size, plan_shards, shard_file_names
from fts_dist.export.sources import CheckpointSource, open_checkpoint

FORMATS = ("safetensors", "hf", "torch")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SHOWN = 10


@dataclass
class Export:
    """What an export wrote."""

    files: list[Path] = field(default_factory=list)
    tensors: int = 0
    bytes: int = 0
    largest_shard_bytes: int = 0
    unchecked: bool = False  # the checkpoint recorded no names to check against


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    format: str = "safetensors",
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    strip_prefix: str | None = None,
    hf_config: str | Path | None = None,
) -> Export:
    """Write the model weights of ``checkpoint`` (a file, a DCP directory or a DeepSpeed directory) to ``out``.

    ``out`` ending in ``.safetensors`` (or ``.pt`` / ``.bin`` with ``format="torch"``) gets one file; otherwise
    ``out`` is a directory of shards no larger than ``max_shard_size`` each (one tensor larger than that gets a
    shard of its own), with ``model.safetensors.index.json`` when there are several. ``dtype`` casts floating
    tensors; ``strip_prefix`` removes a prefix from the names that have it (``model.`` for a LightningModule that
    holds its network as ``self.model``). ``format="hf"`` writes a directory that ``transformers``'
    ``from_pretrained`` loads: safetensors shards and the model's ``config.json`` (from ``hf_config``: that file, or
    a directory holding it), without the output embedding when the config ties it to the input one.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    config = _hf_config(hf_config) if format == "hf" else None
    source = open_checkpoint(checkpoint)
    renamed = _renamed(list(source.tensors), strip_prefix)
    tied_head = config is not None and config.get("tie_word_embeddings", True)  # from_pretrained ties it again
    result = Export(unchecked=_check_coverage(source, strip_prefix) is None)
    cast = DTYPES[dtype] if dtype else None
    sizes = {
        name: info.nbytes(cast)
        for name, info in source.tensors.items()
        if not (tied_head and renamed[name] == "lm_head.weight")
    }
    out = Path(out)
    single = out.suffix in (".safetensors", ".pt", ".bin") and format != "hf"
    shards = plan_shards(sizes, sum(sizes.values()) + 1 if single or format == "torch" else parse_size(max_shard_size))
    if single:
        files = [out.name]
        out.parent.mkdir(parents=True, exist_ok=True)
        directory = out.parent
    else:
        suffix = ".bin" if format == "torch" else ".safetensors"
        files = shard_file_names(len(shards), "pytorch_model" if format == "torch" else "model", suffix)
        out.mkdir(parents=True, exist_ok=True)
        directory = out
    for names, file in zip(shards, files, strict=True):
        tensors = {renamed[name]: _cast(tensor, cast) for name, tensor in source.read(names).items()}
        shard_bytes = sum(sizes[name] for name in names)
        _write(tensors, directory / file, format)
        del tensors
        result.files.append(directory / file)
        result.tensors += len(names)
        result.bytes += shard_bytes
        result.largest_shard_bytes = max(result.largest_shard_bytes, shard_bytes)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        result.files.append(directory / "config.json")
    if len(files) > 1:
        index_path = directory / ("pytorch_model.bin.index.json" if format == "torch" else INDEX_NAME)
        renamed_shards = [[renamed[n] for n in names] for names in shards]
        index_path.write_text(json.dumps(index(renamed_shards, files, result.bytes), indent=2))
        result.files.append(index_path)
    return result


def _hf_config(path: str | Path | None) -> dict[str, object]:
    """The model's ``config.json`` (``path``: the file, or a directory holding it)."""
    if path is None:
        raise ExportError(
            "format 'hf' needs the model's config: pass hf_config (--hf-config), a config.json or its directory"
        )
    file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ExportError(f"no config.json at '{path}'")
    return dict(json.loads(file.read_text()))


def _check_coverage(source: CheckpointSource, strip_prefix: str | None) -> list[str] | None:
    """Raise when the checkpoint lacks a name it recorded; the recorded names, or None without a record."""
    recorded = recorded_model_names(source.metadata())
    if recorded is None:
        return None
    expected = [*recorded.get("parameters", []), *recorded.get("buffers", [])]
    missing = [name for name in expected if name not in source.tensors]
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (f" (and {len(missing) - _SHOWN} more)" if len(missing) > _SHOWN else "")
        raise ExportError(
            f"'{source.path}' lacks {len(missing)} of the model's {len(expected)} parameters and buffers: {shown}. "
            "Nothing was written. Export a checkpoint saved by the whole model (a ZeRO-1 checkpoint may hold no "
            "frozen parameters: save with ZeRO-2 or 3, or export from a DDP or FSDP run)."
        )
    return expected


def _renamed(names: list[str], strip_prefix: str | None) -> dict[str, str]:
    renamed = {
        name: name[len(strip_prefix) :] if strip_prefix and name.startswith(strip_prefix) else name for name in names
    }
    clashes = len(set(renamed.values())) < len(renamed)
    if clashes:
        raise ExportError(f"stripping {strip_prefix!r} makes two tensors share a name; strip a longer prefix")
    return renamed


def _cast(tensor: torch.Tensor, cast: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().contiguous()
    return tensor.to(cast) if cast is not None and tensor.is_floating_point() else tensor


def _write(tensors: dict[str, torch.Tensor], path: Path, format: str) -> None:
    """Write one file atomically (a hidden partial file renamed over ``path``)."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if format != "torch":
        from safetensors.torch import save_file

        save_file(tensors, str(partial), metadata={"format": "pt"})
    else:
        torch.save(tensors, partial)
    os.replace(partial, path)
