"""examples/llm/: the LightningCLI config parses (every class path and argument) and its generated schedule is
valid for the model it names; the model is built on the meta device, so this takes seconds at 1B parameters."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.timeout(200),
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="pip install fts-dist[demo]"),
]


def test_the_llm_config_parses_and_its_schedule_is_valid_for_its_model() -> None:
    config = ROOT / "examples" / "llm" / "llama_fsdp2.yaml"
    printed = subprocess.run(
        [sys.executable, "-m", "fts_dist.cli", "fit", "--config", str(config), "--print_config"],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "class_path: fts_dist.examples.causal_lm.CausalLM" in printed.stdout
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    validate = [
        *("schedule", "validate", "examples/llm/llama_schedule.yaml"),
        *(
            "--model",
            "fts_dist.examples.causal_lm:CausalLM",
            "--init-args",
            json.dumps({"config": init_args["config"]}),
        ),
    ]
    checked = subprocess.run(
        [sys.executable, "-m", "fts_dist.cli", *validate], cwd=ROOT, capture_output=True, text=True, timeout=150
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "valid: 6 phases, 146 parameter tensors scheduled" in checked.stdout  # 16 layers of 9, norm, embeddings
