"""``fts-dist --version`` and ``--help`` answer at once: they import neither Lightning nor torch (measured: importing
Lightning alone takes 7-11 s on the project's machines)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from fts_dist.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy_packages = ("pytorch_lightning", "lightning", "lightning_fabric", "torch")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in heavy_packages)
print("HEAVY:", heavy)
"""


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["schedule", "--help"], ["schedule", "validate", "--help"]]
)
def test_quick_commands_import_no_lightning_module(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY: []" in proc.stdout
    assert "fts-dist" in proc.stdout


def test_the_package_exports_load_on_first_use() -> None:
    probe = "import sys, fts_dist; assert 'torch' not in sys.modules; fts_dist.FinetuningScheduler; print('ok')"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
