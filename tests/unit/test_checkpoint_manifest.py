"""Checkpoint manifests (``fts_dist.checkpoint_manifest``): what a save records, and what each rank's check before a
load finds in truncated, missing, foreign and unrecorded files. The collective agreement over these checks is
tested on 2 ranks in tests/distributed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from fts_dist.checkpoint_io import AtomicCheckpointIO
from fts_dist.checkpoint_manifest import (
    owner_of,
    problems_before_load,
    record_owned_files,
    sidecar_path,
    write_directory_manifest,
)


def sharded_checkpoint(root: Path, name: str = "ckpt", fill: bytes = b"a") -> Path:
    """A DCP-like directory written by 2 ranks, with its manifest."""
    directory = root / name
    directory.mkdir()
    (directory / ".metadata").write_bytes(b"m" * 10)
    for rank in (0, 1):
        (directory / f"__{rank}_0.distcp").write_bytes(fill * (100 + rank))
    records = {**record_owned_files(directory, 0, 2), **record_owned_files(directory, 1, 2)}
    write_directory_manifest(directory, records)
    return directory


def test_files_belong_to_the_rank_their_name_carries() -> None:
    assert owner_of("__3_0.distcp", 4) == 3 and owner_of(".metadata", 4) == 0
    assert owner_of("checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt", 2) == 1
    assert owner_of("checkpoint/mp_rank_00_model_states.pt", 2) == 0
    assert owner_of("__5_0.distcp", 4) == 1  # written by a larger world: checked by rank 5 % 4


def test_an_intact_directory_passes_on_every_rank(tmp_path: Path) -> None:
    directory = sharded_checkpoint(tmp_path)
    assert problems_before_load(directory, 0, 2) == [] and problems_before_load(directory, 1, 2) == []


def test_truncated_and_missing_files_are_seen_by_every_rank_and_foreign_ones_by_their_owner(tmp_path: Path) -> None:
    directory = sharded_checkpoint(tmp_path)
    shard = directory / "__1_0.distcp"
    with open(shard, "r+b") as handle:
        handle.truncate(50)
    for rank in (0, 1):
        assert problems_before_load(directory, rank, 2) == [f"{shard}: 50 bytes, the manifest records 101 (truncated?)"]
    shard.unlink()
    assert problems_before_load(directory, 0, 2) == [f"{shard}: missing"]
    shard.write_bytes(sharded_checkpoint(tmp_path, "other", fill=b"b").joinpath("__1_0.distcp").read_bytes())
    assert problems_before_load(directory, 0, 2) == []  # the right size: only its owner reads its bytes
    assert "CRC-32 differs" in problems_before_load(directory, 1, 2)[0]
    assert problems_before_load(tmp_path / "gone", 1, 2) == [f"{tmp_path / 'gone'}: missing"]


def test_a_directory_without_a_manifest_is_checked_for_what_can_be_checked(tmp_path: Path) -> None:
    directory = tmp_path / "legacy"
    directory.mkdir()
    torch.save({"w": torch.ones(100)}, directory / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    (directory / "__0_0.distcp").write_bytes(b"")
    assert problems_before_load(directory, 1, 2) == []
    assert problems_before_load(directory, 0, 2) == [f"{directory / '__0_0.distcp'}: empty"]
    partition = directory / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with open(partition, "r+b") as handle:
        handle.truncate(partition.stat().st_size - 30)
    assert problems_before_load(directory, 1, 2) == [f"{partition}: a zip file without its end (truncated)"]


def test_a_single_file_checkpoint_keeps_its_manifest_beside_it(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)
    assert sidecar_path(path).is_file() and problems_before_load(path, 0, 2) == []
    saved = path.read_bytes()
    other = tmp_path / "other.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}}, other)  # another run's checkpoint
    assert other.stat().st_size == len(saved)
    shutil.copy(other, path)
    assert "CRC-32 differs" in problems_before_load(path, 0, 2)[0]
    assert problems_before_load(path, 1, 2) == []  # rank 0 reads the bytes; every rank reads the size
    path.write_bytes(saved[:-10])
    assert "truncated or replaced" in problems_before_load(path, 1, 2)[0]
    io.remove_checkpoint(path)
    assert not path.exists() and not sidecar_path(path).exists()


def test_a_kill_between_the_manifest_and_the_rename_leaves_a_pair_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    real_replace = os.replace

    def killed(source: object, target: object) -> None:
        if Path(str(target)) == path:
            raise KeyboardInterrupt  # the kill lands right before the checkpoint's own rename
        real_replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "more": torch.ones(100)}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1 and problems_before_load(path, 0, 1) == []  # the old file still verifies


def test_an_unrecorded_single_file_is_checked_for_what_can_be_checked(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"w": torch.ones(100)}, path)
    assert problems_before_load(path, 0, 1) == []
    shutil.copy(path, tmp_path / "copy.ckpt")
    with open(tmp_path / "copy.ckpt", "r+b") as handle:
        handle.truncate(100)
    assert problems_before_load(tmp_path / "copy.ckpt", 0, 1) == [
        f"{tmp_path / 'copy.ckpt'}: a zip file without its end (truncated)"
    ]


def test_a_file_put_in_place_another_way_is_checked_as_one_without_a_manifest(tmp_path: Path) -> None:
    """Lightning's ``save_last="link"`` removes last.ckpt and links it to another file; the old sidecar speaks
    for neither the link nor the file it names."""
    io, last, best = AtomicCheckpointIO(), tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    io.save_checkpoint({"step": 1}, last)
    io.save_checkpoint({"step": 2, "more": torch.ones(50)}, best)
    last.unlink()
    last.symlink_to(best)
    assert problems_before_load(last, 0, 1) == []  # the linked file, with its own manifest
