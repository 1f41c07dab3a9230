"""Publishing a finished checkpoint (file or sharded directory) over the old one, and tidying what crashes leave."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fts_dist import checkpoint_io
from fts_dist.checkpoint_io import publish, staging_path, tidy_checkpoint_directory


def sharded(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "__0_0.distcp").write_text(content)
    (path / "meta.pt").write_text(content)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
@pytest.mark.parametrize("old", ["directory", "file", "none"])
def test_the_new_checkpoint_replaces_the_old_and_nothing_is_left_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool, old: str
) -> None:
    if not exchange:  # a filesystem without RENAME_EXCHANGE (NFS)
        monkeypatch.setattr(checkpoint_io, "_exchange", lambda first, second: False)
    target = tmp_path / "last.ckpt"
    if old == "directory":
        sharded(target, "old")
    elif old == "file":
        target.write_text("old whole-model file")
    publish(sharded(staging_path(target), "new"), target)
    assert (target / "meta.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_file_replaces_a_directory(tmp_path: Path) -> None:
    target = sharded(tmp_path / "last.ckpt", "old")
    staging = staging_path(target)
    staging.write_text("new whole-model file")
    publish(staging, target)
    assert target.read_text() == "new whole-model file"


def test_tidying_drops_interrupted_writes_and_brings_back_a_checkpoint_moved_aside(tmp_path: Path) -> None:
    """A crash between the fallback's two renames leaves ``.last.ckpt.fts-retired`` and no ``last.ckpt``."""
    sharded(tmp_path / ".last.ckpt.fts-retired", "previous")
    sharded(tmp_path / ".epoch=3.ckpt.fts-staging", "half")
    sharded(tmp_path / "best.ckpt", "best")
    sharded(tmp_path / ".best.ckpt.fts-retired", "older best")
    tidy_checkpoint_directory(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (tmp_path / "last.ckpt" / "meta.pt").read_text() == "previous"
    assert (tmp_path / "best.ckpt" / "meta.pt").read_text() == "best"


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of the file at ``path`` (read from /proc/self/maps)."""
    address, name = tensor.data_ptr(), str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) == 6 and fields[5] == name and start <= address < end:
            return True
    return False


def test_restores_map_the_weights_and_copy_the_optimizer_state_out_of_the_file(tmp_path: Path) -> None:
    """Ranks on a node share the weights through the page cache; the optimizer keeps what it is given, so its state
    must not stay mapped: truncating the file afterwards would kill the process with SIGBUS at the next step."""
    path = tmp_path / "best.ckpt"
    weights, moments = torch.arange(4096.0), torch.full((4096,), 2.0)
    torch.save({"state_dict": {"w": weights}, "optimizer_states": [{"state": {0: {"exp_avg": moments}}}]}, path)
    checkpoint = checkpoint_io.AtomicCheckpointIO().load_checkpoint(path)
    state = checkpoint["optimizer_states"][0]["state"][0]["exp_avg"]
    assert mapped_from(checkpoint["state_dict"]["w"], path)
    assert not mapped_from(state, path)
    path.write_bytes(b"")  # truncated in place by someone else
    assert torch.equal(state, moments)
