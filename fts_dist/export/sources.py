"""The model weights of a checkpoint, listed without reading them and read a few tensors at a time.

Three kinds of checkpoint hold them:

- ``file``: one file (DDP, one device, whole-model FSDP saves): Lightning's ``state_dict``, memory-mapped;
- ``dcp``: a ``torch.distributed.checkpoint`` directory (FSDP2 saves the model under ``state_dict.``, FSDP1 under
  ``model.``): each tensor is read from the shards that hold its pieces, in one process;
- ``deepspeed``: a DeepSpeed directory (``latest``, ``checkpoint/``): the fp32 master weights, merged from every
  rank's optimizer partitions by DeepSpeed's own ``zero_to_fp32`` (lazily: a tensor is built when it is read), and
  buffers and frozen parameters from the model states.

Names are the LightningModule's (``named_parameters()`` and ``state_dict()``); nothing reads optimizer state.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

DCP_PREFIXES = ("state_dict.", "model.")  # Lightning's ModelParallelStrategy (FSDP2), FSDPStrategy (FSDP1)
_WRAPPER_PREFIXES = ("_forward_module.",)  # Lightning's wrapper of the module, in names DeepSpeed saves


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def nbytes(self, cast: torch.dtype | None = None) -> int:
        """Its size in bytes, or once cast to ``cast`` (floating tensors only are cast)."""
        dtype = cast if cast is not None and self.dtype.is_floating_point else self.dtype
        return self.numel * torch.empty((), dtype=dtype).element_size()


class CheckpointSource:
    """One checkpoint's model tensors: :attr:`tensors` lists them, :meth:`read` materialises some."""

    kind = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors: dict[str, TensorInfo] = {}

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """What the checkpoint holds besides tensors (loops, callbacks, epoch, step)."""
        raise NotImplementedError

    def files(self) -> list[Path]:
        return [p for p in sorted(self.path.rglob("*")) if p.is_file()] if self.path.is_dir() else [self.path]


def open_checkpoint(path: str | Path) -> CheckpointSource:
    """The source for the checkpoint at ``path``, by its kind; ``ValueError`` when it is none of them."""
    path = Path(path)
    if path.is_file():
        return FileSource(path)
    if (path / ".metadata").is_file():
        return DCPSource(path)
    if (path / "latest").is_file():
        return DeepSpeedSource(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    raise ValueError(
        f"'{path}' is not a checkpoint fts_dist can read: neither a file, a torch.distributed.checkpoint directory "
        "(.metadata) nor a DeepSpeed directory (latest)."
    )


class FileSource(CheckpointSource):
    kind = "file"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        weights = self._checkpoint.get("state_dict", self._checkpoint)
        self._weights = {_clean(name): value for name, value in weights.items() if isinstance(value, torch.Tensor)}
        self.tensors = {name: TensorInfo(tuple(t.shape), t.dtype) for name, t in self._weights.items()}

    @override
    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        return {name: self._weights[name].clone() for name in names}  # out of the mapping

    @override
    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self._checkpoint.items() if k not in ("state_dict", "optimizer_states")}


class DCPSource(CheckpointSource):
    kind = "dcp"

    def __init__(self, path: Path) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        super().__init__(path)
        saved = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        self.prefix = next((p for p in DCP_PREFIXES if any(k.startswith(p) for k in saved)), "")
        if not self.prefix:
            raise ValueError(f"'{path}' holds no model weights under {' or '.join(DCP_PREFIXES)}")
        for key, item in saved.items():
            if key.startswith(self.prefix) and isinstance(item, TensorStorageMetadata):
                self.tensors[_clean(key[len(self.prefix) :])] = TensorInfo(tuple(item.size), item.properties.dtype)
        self._keys = {_clean(k[len(self.prefix) :]): k for k in saved if k.startswith(self.prefix)}

    @property
    def strategy(self) -> str:
        return "FSDP2 (ModelParallelStrategy)" if self.prefix == "state_dict." else "FSDP1 (FSDPStrategy)"

    @override
    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        import torch.distributed.checkpoint as dcp

        names = list(names)
        buffers = {self._keys[n]: torch.empty(self.tensors[n].shape, dtype=self.tensors[n].dtype) for n in names}
        with warnings.catch_warnings():  # that it loads in one process, which is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(buffers, checkpoint_id=str(self.path), no_dist=True)  # each piece from the shard that holds it
        return {name: buffers[self._keys[name]] for name in names}

    @override
    def metadata(self) -> dict[str, Any]:
        meta = self.path / "meta.pt"
        return dict(torch.load(meta, map_location="cpu", weights_only=False)) if meta.is_file() else {}


class DeepSpeedSource(CheckpointSource):
    kind = "deepspeed"

    def __init__(self, path: Path) -> None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        super().__init__(path)
        tag = (path / "latest").read_text().strip()
        model_files = sorted((path / tag).glob("*model_states.pt"))
        self._model_states = torch.load(model_files[0], map_location="cpu", mmap=True, weights_only=False)
        optim_files = sorted((path / tag).glob("*optim_states.pt"))
        first_optim = torch.load(optim_files[0], map_location="cpu", mmap=True, weights_only=False)
        self.zero_stage = int(first_optim["optimizer_state_dict"].get("zero_stage", 0))
        self.world_size = len(optim_files)
        del first_optim
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines, away from the command's own output
            lazy = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag, lazy_mode=True)
        self._lazy = {_clean(name): tensor for name, tensor in lazy.items()}
        module = self._model_states.get("module") or {}
        self._from_module = {  # what zero_to_fp32 leaves out (a ZeRO-1 checkpoint's frozen parameters, issue 5439)
            _clean(name): value
            for name, value in module.items()
            if _clean(name) not in self._lazy and isinstance(value, torch.Tensor) and value.numel() > 0
        }
        for name, tensor in self._lazy.items():
            self.tensors[name] = TensorInfo(tuple(tensor.shape), tensor.dtype)
        for name, value in self._from_module.items():
            self.tensors[name] = TensorInfo(tuple(value.shape), value.dtype)

    @override
    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        return {
            name: self._lazy[name].contiguous() if name in self._lazy else self._from_module[name].clone()
            for name in names
        }

    @override
    def metadata(self) -> dict[str, Any]:
        skip = ("module", "optimizer", "buffer_names", "param_shapes", "frozen_param_shapes", "frozen_param_fragments")
        return {k: v for k, v in self._model_states.items() if k not in skip}


def read_index(path: Path) -> dict[str, str]:
    """A sharded safetensors export's index: tensor name -> shard file."""
    return dict(json.loads(path.read_text())["weight_map"])


def _clean(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name
