"""What ranks are meant to share after a transition, and the comparison that says where they do not.

Each rank describes itself as a :class:`ReplicaView`: its trainable set, and a checksum of every tensor it holds
together with the shard coordinate that says which ranks must hold the same values. A whole tensor (DDP, one
process) has the empty coordinate: every rank must match. A DTensor shard's coordinate is its position along the
mesh dimensions it is sharded over, so only ranks that differ along replicate dimensions (HSDP's replica groups, a
tensor-parallel norm) are compared. The trainable set must be the same on every rank.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

ShardKey = tuple[int, ...]
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class ReplicaView:
    """One rank's trainable names and ``name -> (shard key, checksum)`` of the tensors it holds."""

    trainable: tuple[str, ...]
    tensors: dict[str, tuple[ShardKey, int]]


def checksum(tensor: torch.Tensor) -> int:
    """A checksum of the tensor's bytes: equal for bitwise-equal tensors, different for (nearly) any change.

    CRC-32 on CPU (11 ms for 11M float32 elements here, against 95 ms for float64 sums); on an accelerator, where the
    tensor lives, an exact integer sum of its bit patterns weighted by position (so a swap of values shows too).
    """
    values = tensor.detach().contiguous().reshape(-1)
    if values.device.type == "cpu":
        return zlib.crc32(values.view(torch.uint8).numpy().data)
    bits = values.view(_INT_OF_SIZE.get(values.element_size(), torch.uint8)).to(torch.int64)
    weights = torch.arange(bits.numel(), device=bits.device) % 65521 + 1
    return int((bits * weights).sum())


def _shard_key(tensor: torch.Tensor) -> ShardKey:
    """This rank's coordinate along the mesh dimensions ``tensor`` is sharded over; ``()`` for a whole tensor."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return ()
    coordinate = list(tensor.device_mesh.get_coordinate() or ())
    return tuple(coordinate[dim] for dim, placement in enumerate(tensor.placements) if placement.is_shard())


def _local_values(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def replica_view(named_tensors: Iterable[tuple[str, torch.Tensor]], trainable: Iterable[str]) -> ReplicaView:
    """The view of a rank holding ``named_tensors`` (whole tensors or DTensors) with ``trainable`` thawed. A shard
    that no other rank holds (a DTensor replicated along no mesh dimension: FSDP2's) gets no checksum: nothing
    compares it, and checksumming every shard was a third of an FSDP2 transition's fixed cost."""
    return ReplicaView(
        trainable=tuple(sorted(trainable)),
        tensors={
            name: (_shard_key(t), checksum(_local_values(t)) if _held_elsewhere(t) else 0) for name, t in named_tensors
        },
    )


def _held_elsewhere(tensor: torch.Tensor) -> bool:
    """Whether another rank holds the same values: a whole tensor, or a DTensor replicated along a mesh dimension."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return True
    return any(
        p.is_replicate() and size > 1 for p, size in zip(tensor.placements, tensor.device_mesh.shape, strict=True)
    )


def replica_problems(views: list[ReplicaView]) -> list[str]:
    """What differs between ranks that must agree, one line per pair of ranks (``views[r]`` is rank ``r``'s)."""
    problems = []
    reference_trainable = views[0].trainable
    for rank, view in enumerate(views[1:], start=1):
        if view.trainable != reference_trainable:
            diff = sorted(set(view.trainable) ^ set(reference_trainable))
            problems.append(f"rank {rank} trainable set differs from rank 0's: {diff[:5]}")
    differing: dict[tuple[int, int], list[str]] = {}  # (rank, the first rank holding the same shard) -> names
    for name in views[0].tensors:
        first_holder: dict[ShardKey, int] = {}
        for rank, view in enumerate(views):
            if name not in view.tensors:
                problems.append(f"rank {rank} holds no {name!r}, which rank 0 holds")
                continue
            key, sums = view.tensors[name]
            reference = first_holder.setdefault(key, rank)
            if reference != rank and views[reference].tensors[name][1] != sums:
                differing.setdefault((rank, reference), []).append(name)
    for (rank, reference), names in sorted(differing.items()):
        problems.append(f"rank {rank} weights differ from rank {reference}'s in {names[:5]}")
    return problems
