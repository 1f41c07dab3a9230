"""fts-dist schedule gen | validate | show on a real LightningModule (the toy classifier)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fts_dist.cli import main
from fts_dist.examples.toy import ToyClassifier
from fts_dist.schedule import generate_implicit_schedule

MODEL = "fts_dist.examples.toy:ToyClassifier"
ROOT = Path(__file__).resolve().parents[2]
TOY_SCHEDULE = str(ROOT / "examples" / "toy_schedule.yaml")


def test_gen_writes_the_implicit_schedule(tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy.yaml"
    assert main(["schedule", "gen", MODEL, "--init-args", '{"hidden": 16}', "--out", str(out)]) == 0
    names = [n for n, _ in ToyClassifier(hidden=16).named_parameters()]
    assert yaml.safe_load(out.read_text()) == generate_implicit_schedule(names).to_dict()
    assert f"wrote {out}" in capsys.readouterr().out


def test_gen_blocks_writes_the_block_wise_schedule(tmp_path: Path, capsys) -> None:
    """The toy's body.0 and body.2 are its repeated blocks: head first, then body.2, then body.0, lr decayed."""
    out = tmp_path / "blocks.yaml"
    args = ["--blocks", "--lr", "1e-3", "--lr-decay", "0.1", "--epochs-per-phase", "2", "--out", str(out)]
    assert main(["schedule", "gen", MODEL, *args]) == 0
    assert yaml.safe_load(out.read_text()) == {
        0: {"params": ["head.weight", "head.bias"], "max_transition_epoch": 2},
        1: {"params": ["body\\.2\\."], "max_transition_epoch": 4, "lr": 1e-3},
        2: {"params": ["body\\.0\\."], "max_transition_epoch": 6, "lr": 1e-4},
    }
    assert main(["schedule", "validate", str(out), "--model", MODEL]) == 0
    assert "valid: 3 phases, 6 parameter tensors scheduled" in capsys.readouterr().out


def test_show_marks_freeze_and_scale_lrs(tmp_path: Path, capsys) -> None:
    path = tmp_path / "refreeze.yaml"
    path.write_text("0: {params: [head.*]}\n1: {params: [body.*], freeze: [head.bias], scale_lrs: 0.5}\n")
    assert main(["schedule", "show", str(path), "--model", MODEL]) == 0
    out = capsys.readouterr().out
    assert "| base_max_lr, earlier groups x0.5 | early stopping | body.0.weight" in out
    assert "; freezes 1 again: head.bias |" in out


def test_show_marks_reinitialisations_and_validate_tries_their_classes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "reinit.yaml"
    new_optimizer = "{optimizer_init: {class_path: torch.optim.AdamW, init_args: {lr: 1.0e-3}}}"
    new_scheduler = "{lr_scheduler_init: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 1}}}"
    path.write_text(
        f"0: {{params: [head.*]}}\n1: {{params: [body.*], new_optimizer: {new_optimizer}, "
        f"new_lr_scheduler: {new_scheduler}}}\n"
    )
    assert main(["schedule", "show", str(path), "--model", MODEL]) == 0
    assert "| base_max_lr; new AdamW; new StepLR | early stopping | body.0.weight" in capsys.readouterr().out
    path.write_text(path.read_text().replace("step_size: 1", "step_sizes: 1"))
    assert main(["schedule", "validate", str(path), "--model", MODEL]) == 1
    assert "Phase 1 `new_lr_scheduler`: StepLR(optimizer, **{'step_sizes': 1})" in capsys.readouterr().err


def test_validate_accepts_a_good_schedule(capsys) -> None:
    assert main(["schedule", "validate", TOY_SCHEDULE, "--model", MODEL, "--strategy", "ddp"]) == 0
    assert "valid: 3 phases, 6 parameter tensors scheduled" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "extra", "expected"),
    [
        ("0: {params: [head.weight]}\n1: {params: ['bdy.0.*']}\n", [], "Phase 1 `params` entry 'bdy.0.*' matches no"),
        ("0: {params: [head.*]}\n1: {params: [body.*], lr: fast}\n", [], "Phase 1 `lr` must be a non-negative"),
        ("0: {params: [head.*]\n", [], "is not valid YAML"),
        (
            "0: {params: [head.*]}\n",
            ["--strategy", "xla"],
            "no adapter for strategy XLAStrategy; supported:",
        ),
        ("0: {params: [head.*]}\n", ["--strategy", "warp_drive"], "Unknown strategy 'warp_drive'"),
        ("0: {params: [head.*]}\n", ["--epoch-transitions-only"], "needs a `max_transition_epoch` in every phase"),
        (
            "0: {params: [head.*]}\n1: {params: [body.2.*], freeze: [body.0.weight]}\n",
            [],
            "Phase 1 `freeze` entry 'body.0.weight' names 'body.0.weight', but no phase thaws it",
        ),
    ],
)
def test_validate_exits_1_naming_the_error(tmp_path: Path, capsys, text: str, extra: list, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["schedule", "validate", str(path), "--model", MODEL, *extra]) == 1
    assert expected in capsys.readouterr().err


def test_validate_rejects_an_unimportable_model(capsys) -> None:
    assert main(["schedule", "validate", TOY_SCHEDULE, "--model", "no_such_package.models:Net"]) == 1
    assert "Cannot import 'no_such_package.models'" in capsys.readouterr().err


def test_show_prints_the_phase_table_and_plots_the_timeline(tmp_path: Path, capsys) -> None:
    plot = tmp_path / "timeline.png"
    assert main(["schedule", "show", TOY_SCHEDULE, "--model", MODEL, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 2 | 132 | optimizer's | 2 | head.weight, head.bias |" in out
    assert "| 1 | 2 | 1,056 | 0.001 | 4 | body.2.weight, body.2.bias |" in out
    assert "| 2 | 2 | 544 | 0.001 | early stopping | body.0.weight, body.0.bias |" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
