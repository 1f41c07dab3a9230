"""What a checkpoint should hold, written when it is saved, and each rank's check of its own part before a load.

A directory checkpoint (DCP shards, DeepSpeed partitions) holds ``fts-manifest.json``: every file with its size and
CRC-32. A file belongs to the rank whose name it carries (``__1_0.distcp``, ``zero_pp_rank_1_...``); the rest
(metadata, whole-model files) belong to rank 0. At save, each rank checksums the files it owns; at a load, each rank
stats every file and checksums its own, so a truncated or missing file is seen by every rank and a foreign one (the
right size, another checkpoint's bytes) by its owner. A single-file checkpoint keeps its manifest beside it
(``.NAME.fts-manifest.json``), written before the file is renamed into place and accepting the file it replaces
too, so a kill between the two renames leaves a pair that still verifies.

A checkpoint written without a manifest is checked for what can be checked: each file is there and not empty, and
a file in torch's zip format ends with its central directory (a truncated one does not).

Nothing here communicates: :func:`fts_dist.adapters.checkpoint_checks.verify_before_load` has the ranks agree.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "fts-manifest.json"
_SIDECAR = ".{name}.fts-manifest.json"
_CHUNK = 1 << 22
_RANK_IN_NAME = (
    re.compile(r"^__(\d+)_\d+\.distcp$"),  # torch.distributed.checkpoint: __{rank}_{file}.distcp
    re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(?:optim|model)_states\.pt$"),  # DeepSpeed: the data-parallel rank
)
_ZIP_MAGIC = b"PK\x03\x04"
_FOREIGN = "{path}: its bytes are not the ones saved (CRC-32 differs): a file from another checkpoint?"


@dataclass(frozen=True)
class FileRecord:
    """A checkpoint file as it was written: its size in bytes and CRC-32."""

    size: int
    crc32: int


def crc32_of(path: Path) -> int:
    """CRC-32 of a file, read in 4 MiB chunks."""
    value = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return value


def owner_of(relative: str, world_size: int) -> int:
    """The rank that writes (and, at a load, checksums) the file ``relative`` of a directory checkpoint."""
    name = Path(relative).name
    for pattern in _RANK_IN_NAME:
        match = pattern.search(name)
        if match:
            return int(match.group(1)) % world_size
    return 0


def record_owned_files(directory: Path, rank: int, world_size: int) -> dict[str, FileRecord]:
    """Size and CRC-32 of each file under ``directory`` that ``rank`` owns, by path relative to it."""
    records = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        relative = path.relative_to(directory).as_posix()
        if owner_of(relative, world_size) == rank:
            records[relative] = FileRecord(path.stat().st_size, crc32_of(path))
    return records


def write_directory_manifest(directory: Path, records: dict[str, FileRecord]) -> None:
    _write_json(directory / MANIFEST_NAME, {"files": {k: [r.size, r.crc32] for k, r in sorted(records.items())}})


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(_SIDECAR.format(name=checkpoint.name))


def write_file_manifest(written: Path, target: Path) -> None:
    """The manifest of ``target`` once ``written`` (its new content, not yet renamed into place) replaces it; it
    still accepts ``target``'s present content, in case the rename never happens."""
    accepted = [FileRecord(written.stat().st_size, crc32_of(written))]
    previous = _read_file_manifest(target)
    inodes = [written.stat().st_ino]
    if target.is_file() and previous:
        accepted.append(previous[0])
        inodes.append(target.stat().st_ino)
    content = {"accepts": [[r.size, r.crc32] for r in accepted], "inodes": inodes}
    _write_json(sidecar_path(target), content)  # a rename keeps the inode: another file in its place does not


def problems_before_load(checkpoint: Path, rank: int, world_size: int) -> list[str]:
    """What is wrong with ``checkpoint`` (a file or a directory) as this rank sees it: each problem names the file.
    Every rank checks that each file is there at its size; each checksums the files it owns."""
    if not checkpoint.exists():
        return [f"{checkpoint}: missing"]
    checkpoint = checkpoint.resolve()  # a linked last.ckpt: the file it names, and that file's manifest
    if checkpoint.is_dir():
        return _directory_problems(checkpoint, rank, world_size)
    accepted = _read_file_manifest(checkpoint)
    if not accepted:
        return _unrecorded_problems([checkpoint])
    size = checkpoint.stat().st_size
    if all(record.size != size for record in accepted):
        return [f"{checkpoint}: {size} bytes, the manifest records {accepted[0].size} (truncated or replaced)"]
    if rank == 0 and crc32_of(checkpoint) not in {record.crc32 for record in accepted}:
        return [_FOREIGN.format(path=checkpoint)]
    return []


def _directory_problems(directory: Path, rank: int, world_size: int) -> list[str]:
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        owned = [p for p in directory.rglob("*") if p.is_file() and owner_of(p.name, world_size) == rank]
        return _unrecorded_problems(owned)
    try:
        files = {name: FileRecord(*entry) for name, entry in json.loads(manifest.read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{manifest}: unreadable manifest ({err})"]
    problems = []
    for relative, record in files.items():
        path = directory / relative
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != record.size:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest records {record.size} (truncated?)")
        elif owner_of(relative, world_size) == rank and crc32_of(path) != record.crc32:
            problems.append(
                f"{path}: its bytes are not the ones saved (CRC-32 differs): a file from another checkpoint?"
            )
    return problems


def _unrecorded_problems(paths: Iterable[Path]) -> list[str]:
    """A checkpoint saved without a manifest: each file is not empty, and a zip (torch's format) is whole."""
    problems = []
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            problems.append(f"{path}: empty")
            continue
        with open(path, "rb") as handle:
            zipped = handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if zipped and not zipfile.is_zipfile(path):
            problems.append(f"{path}: a zip file without its end (truncated)")
    return problems


def _read_file_manifest(checkpoint: Path) -> list[FileRecord]:
    """The records the sidecar accepts; none when there is no sidecar, or it belongs to a file since replaced by
    another way than this module's (a link, a copy): that file is checked as one without a manifest."""
    try:
        content = json.loads(sidecar_path(checkpoint).read_text())
        inodes = content.get("inodes")
        if inodes is not None and checkpoint.exists() and checkpoint.stat().st_ino not in inodes:
            return []
        return [FileRecord(*entry) for entry in content["accepts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write_json(path: Path, content: dict[str, object]) -> None:
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    partial.write_text(json.dumps(content))
    os.replace(partial, path)
