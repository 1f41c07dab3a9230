"""FSDP2 on one CUDA device (world size 1, bf16 mixed precision): what the 2-process CPU tests check, on CUDA.

Skipped without CUDA (marker ``gpu``); run with ``python -m pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.launch import launch
from tests.distributed.test_sharded_2proc import STALE, max_abs_diff

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(400)]


def test_fsdp2_bf16_on_one_cuda_device_equals_its_one_process_emulation(tmp_path: Path) -> None:
    run = launch(tmp_path, "--strategy", "fsdp2", "--bf16", world=1, gpu=True)
    assert run.returncode == 0, run.output[-3000:]
    reference = launch(tmp_path, "--bf16", reference=True, world=1, gpu=True)
    assert reference.returncode == 0, reference.output[-3000:]
    ours, ref = run.rank(0), reference.reference()
    assert [len(r["lrs"]) - 1 for r in ours["records"]] == [0, 1, 1, 2, 2]
    assert max_abs_diff(ours["final"], ref["final"]) < 1e-5
    print(f"CUDA peak bytes: FSDP2 {ours['cuda_peak_bytes']:,}, emulation {ref['cuda_peak_bytes']:,}")


def test_fsdp2_restore_of_an_earlier_phase_on_one_cuda_device(tmp_path: Path) -> None:
    run = launch(tmp_path, "--strategy", "fsdp2", *STALE, world=1, gpu=True)
    assert run.returncode == 0, run.output[-3000:]
    reference = launch(tmp_path, *STALE, reference=True, world=1, gpu=True)
    assert reference.returncode == 0, reference.output[-3000:]
    assert [len(r["lrs"]) - 1 for r in run.rank(0)["records"]] == [0, 0, 0, 1, 2, 2]
    assert max_abs_diff(run.rank(0)["final"], reference.reference()["final"]) < 1e-5
