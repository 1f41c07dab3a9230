"""How an export splits tensors into files: sizes, shard plans and the index a sharded export carries.

Pure functions: the export reads and writes one shard at a time from these plans, so its memory stays near the
largest shard. The index and file names follow the Hugging Face convention (``model-00001-of-00003.safetensors``
and ``model.safetensors.index.json``), which ``transformers`` and ``safetensors`` users load as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

INDEX_NAME = "model.safetensors.index.json"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """Bytes from ``5GB`` (decimal, as Hugging Face reads it), ``512MiB`` (binary) or a number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 5GB, 512MiB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def plan_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of names (in ``sizes``' order), each under ``max_bytes`` unless one tensor alone is
    larger (it gets a shard of its own)."""
    shards: list[list[str]] = []
    filled = 0
    for name, size in sizes.items():
        if not shards or (filled + size > max_bytes and shards[-1]):
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    return shards


def shard_file_names(count: int, stem: str = "model", suffix: str = ".safetensors") -> list[str]:
    if count == 1:
        return [f"{stem}{suffix}"]
    return [f"{stem}-{i:05d}-of-{count:05d}{suffix}" for i in range(1, count + 1)]


def index(shards: Sequence[Sequence[str]], files: Sequence[str], total_bytes: int) -> dict[str, object]:
    """The index of a sharded export: its total size and which file holds each tensor."""
    weight_map = {name: file for names, file in zip(shards, files, strict=True) for name in names}
    return {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
