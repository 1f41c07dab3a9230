"""Section (k): the peak memory of ``fts-dist export`` against the checkpoint's size and a whole-model export.

A checkpoint several times larger than its largest shard is written as FSDP2 writes one (a ``torch.distributed
.checkpoint`` directory, the model under ``state_dict.``) and as one file; each export runs in a fresh process,
whose own memory (``RssAnon``) is sampled and compared with where it stood after its imports, and with a
whole-model export in the same session (every tensor read into memory, then one safetensors
file: what single-process consolidation tools do).

    python -m benchmarks.export_memory [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import ROOT, Section, markdown_table

TENSOR_MIB = 16
_SAMPLER = """
import threading, time
def _anon():
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('RssAnon'))
_peak, _done = [0], threading.Event()
def _sample():
    while not _done.is_set():
        _peak[0] = max(_peak[0], _anon())
        time.sleep(0.001)
_start = _anon()
threading.Thread(target=_sample, daemon=True).start()
"""
_REPORT = "_done.set(); time.sleep(0.01); print('PEAK', max(_peak[0], _anon()) - _start)"
_IMPORTS = "import torch, torch.distributed.checkpoint, safetensors.torch, fts_dist.export"


def write_checkpoints(directory: Path, tensors: int) -> tuple[Path, Path]:
    """The same weights as a DCP directory (as FSDP2 saves them) and as one Lightning-style file."""
    import torch.distributed.checkpoint as dcp

    rows = TENSOR_MIB * 2**20 // (4 * 1024)
    weights = {f"layers.{i}.weight": torch.randn(rows, 1024) for i in range(tensors)}
    sharded = directory / "sharded.ckpt"
    dcp.save({"state_dict": weights}, checkpoint_id=str(sharded), no_dist=True)
    single = directory / "single.ckpt"
    torch.save({"state_dict": weights, "epoch": 0}, single)
    return sharded, single


def peak_mib(imports: str, code: str) -> float:
    """How far a fresh Python process's own memory (``RssAnon``: not shared libraries, not mapped files) rises
    above where it stood after ``imports`` while it runs ``code``, sampled every millisecond; in MiB."""
    program = f"{imports}\n{_SAMPLER}\n{code}\n{_REPORT}"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    line = next(line for line in done.stdout.splitlines() if line.startswith("PEAK"))
    return int(line.split()[1]) / 1024


def measure(checkpoint: Path, out: Path, shard_mib: int) -> dict[str, float]:
    imports = "\n".join(
        (
            _IMPORTS,
            "from fts_dist.export import export_checkpoint",
            "from fts_dist.export.sources import open_checkpoint",
        )
    )
    streamed = peak_mib(
        imports, f"export_checkpoint({str(checkpoint)!r}, {str(out / 'streamed')!r}, max_shard_size='{shard_mib}MiB')"
    )
    whole = peak_mib(
        imports,
        f"source = open_checkpoint({str(checkpoint)!r})\nweights = source.read(list(source.tensors))\n"
        f"safetensors.torch.save_file(weights, {str(out / 'whole.safetensors')!r})",
    )
    return {"streamed": streamed, "whole": whole}


def run(quick: bool, work: Path) -> list[Section]:
    tensors = 8 if quick else 24
    size_mib = tensors * TENSOR_MIB
    shard_mib = 2 * TENSOR_MIB
    sharded, single = write_checkpoints(work, tensors)
    rows = []
    for kind, checkpoint in (("DCP directory (FSDP2)", sharded), ("one file (DDP)", single)):
        figures = measure(checkpoint, work / kind.split()[0].lower(), shard_mib)
        rows.append(
            [
                kind,
                f"{size_mib}",
                f"{shard_mib}",
                f"{figures['streamed']:.0f}",
                f"{figures['whole']:.0f}",
                f"{figures['streamed'] / shard_mib:.2f}",
                f"{figures['streamed'] / figures['whole']:.2f}",
            ]
        )
    table = markdown_table(
        [
            "checkpoint",
            "weights MiB",
            "shard MiB",
            "export peak MiB",
            "whole-model peak MiB",
            "export peak / shard",
            "export / whole",
        ],
        rows,
    )
    note = (
        f"{tensors} fp32 tensors of {TENSOR_MIB} MiB, exported as safetensors shards of at most {shard_mib} MiB "
        "(`fts-dist export --max-shard-size`), each export in a fresh process: the peak of the process's own "
        "memory (`RssAnon`, sampled every millisecond: not shared libraries, not memory-mapped checkpoint pages, "
        "which are the page cache's) above where it stood after its imports. Whole-model: the same reader, every "
        "tensor at once, then one file."
    )
    return [Section("(k) Export memory: a shard at a time", f"{table}\n\n{note}")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for section in run(args.quick, Path(work)):
            print(f"## {section.title}\n\n{section.markdown}\n")


if __name__ == "__main__":
    main()
