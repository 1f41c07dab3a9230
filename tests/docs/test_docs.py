"""The documentation site (``mkdocs.yml``, ``docs/``): it builds in strict mode, its examples run or validate, and
its API reference names every public name. Examples cannot rot: a Python block runs (unless its first line says
``# not run: why``), a schedule YAML block (first line ``# model: package.module:Class``) is validated against its
model as ``fts-dist schedule validate`` would, and any other YAML block fails this test."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fts_dist

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md", ROOT / "examples" / "llm" / "README.md"]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
pytestmark = pytest.mark.timeout(600)


def blocks(language: str) -> list[tuple[str, str]]:
    """Every fenced block in ``language`` of the pages: (where, code)."""
    found = []
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text())):
            if match.group(1) == language:
                found.append((f"{page.relative_to(ROOT)}#{number}", match.group(2)))
    return found


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason='pip install -e ".[docs]"')
def test_the_site_builds_in_strict_mode_with_every_page_and_the_generated_ones(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]  # broken links, missing pages, bad references fail it
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for command in ("fts-dist schedule validate", "fts-dist schedule plan", "fts-dist export", "fts-dist ckpt inspect"):
        assert command in cli, command  # generated from the parsers
    assert "Faults injected" in (tmp_path / "site" / "reliability" / "index.html").read_text()
    assert (tmp_path / "site" / "images" / "step_overhead.png").is_file()


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in fts_dist.__all__ if f"fts_dist.{name}" not in reference]
    assert not missing, f"add these to docs/api.md: {missing}"


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[where for where, _ in blocks("python")])
def test_every_python_example_runs(tmp_path: Path, where: str, code: str) -> None:
    first = code.splitlines()[0]
    if first.startswith("# not run:"):
        assert len(first) > len("# not run: ") + 5, f"{where}: say why it is not run"
        compile(code, where, "exec")  # still valid Python
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, f"{where}:\n{ran.stderr[-3000:]}"


@pytest.mark.parametrize(("where", "code"), blocks("yaml"), ids=[where for where, _ in blocks("yaml")])
def test_every_yaml_example_is_a_schedule_valid_for_its_model(tmp_path: Path, where: str, code: str) -> None:
    from fts_dist.cli.schedule_cmds import validate

    match = re.match(r"# model: ([\w.]+:\w+)", code)
    assert match, f"{where}: a YAML example starts with `# model: package.module:Class` (the model it is for)"
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(code)
    result = validate(str(schedule), match.group(1), None, None, False)
    assert not result.errors, f"{where}: {result.errors}"
