"""``fts-dist schedule plan``, ``gen --memory-budget`` and ``validate --memory-budget`` on the toy classifier: the
JSON form, traced activations, DeepSpeed configs, budgets that cut or refuse a schedule, and bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fts_dist.cli import main

MODEL = "fts_dist.examples.toy:ToyClassifier"


def plan(tmp_path: Path, *extra: str) -> list[str]:
    schedule = tmp_path / "toy.yaml"
    assert main(["schedule", "gen", MODEL, "--blocks", "--out", str(schedule)]) == 0
    return ["schedule", "plan", str(schedule), "--model", MODEL, *extra]


def test_plan_prints_the_json_form_with_traced_activations(tmp_path: Path, capsys) -> None:
    args = plan(tmp_path, "--strategy", "fsdp2", "--world-size", "2", "--batch-shape", "8x16", "--json")
    capsys.readouterr()
    assert main(args) == 0
    form = json.loads(capsys.readouterr().out)
    assert form["strategy"] == "fsdp2" and form["world_size"] == 2
    assert [p["trainable_params"] for p in form["phases"]] == [132, 132 + 1056, 132 + 1056 + 544]
    activations = [p["bytes_per_rank"]["activations"] for p in form["phases"]]
    assert 0 < activations[0] < activations[1] < activations[2]  # the head's input, then each thawed layer's
    assert any("traced per phase" in note for note in form["assumptions"])


def test_plan_reads_a_deepspeed_config_and_names_the_binding_phase_over_a_budget(tmp_path: Path, capsys) -> None:
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": 1000}}))
    args = plan(tmp_path, "--strategy", "deepspeed", "--world-size", "2", "--deepspeed-config", str(config))
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    form = json.loads(capsys.readouterr().out)
    assert form["strategy"] == "deepspeed-zero2"
    assert {p["bytes_per_rank"]["buffers"] for p in form["phases"]} == {1000 * 4}  # one bucket: no overlap_comm
    assert main([*args, "--budget", "2KiB"]) == 2
    out = capsys.readouterr().out
    assert "binding phase: 2" in out and "does NOT fit in 2.00 KiB" in out


def test_gen_stops_at_the_deepest_phase_that_fits_and_validate_names_the_one_that_does_not(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "fitted.yaml"
    budget = ["--memory-budget", "24KiB", "--strategy", "ddp", "--world-size", "1"]
    assert main(["schedule", "gen", MODEL, "--blocks", "--out", str(out), *budget]) == 0
    assert "memory budget: stopped at phase 1: phase 2 would need" in capsys.readouterr().out
    assert list(yaml.safe_load(out.read_text())) == [0, 1]
    full = tmp_path / "full.yaml"
    assert main(["schedule", "gen", MODEL, "--blocks", "--out", str(full)]) == 0
    assert main(["schedule", "validate", str(full), "--model", MODEL, *budget]) == 1
    assert "phase 2 needs" in capsys.readouterr().err


def test_bad_plan_input_is_named(tmp_path: Path, capsys) -> None:
    args = plan(tmp_path, "--strategy", "ddp", "--world-size", "1")
    assert main([*args, "--batch-shape", "eight"]) == 1
    assert "--batch-shape 'eight'" in capsys.readouterr().err
    assert main([*args, "--batch-shape", "8x5"]) == 1  # the toy takes 16 features
    assert "could not trace activations" in capsys.readouterr().err
    assert main([*args, "--deepspeed-config", str(tmp_path / "missing.json")]) == 1
    assert "--deepspeed-config" in capsys.readouterr().err
