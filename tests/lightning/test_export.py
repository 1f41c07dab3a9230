"""``fts-dist export`` and ``fts-dist ckpt inspect`` on checkpoints of a real one-device run: the weights, the
names they must cover, casts and prefixes, and the summary. (The 2-rank round trips under DDP, FSDP1, FSDP2 and
ZeRO 1/2/3 are in tests/distributed.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fts_dist.cli import main
from fts_dist.errors import ExportError
from fts_dist.export import export_checkpoint, inspect_checkpoint
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE

SCRIPT = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.65, 0.6]  # phase 1 from epoch 3, phase 2 from epoch 5


@pytest.fixture
def trained(fit, tmp_path: Path) -> tuple[Recorder, Path]:
    """A 7-epoch run through both transitions, with BatchNorm (persistent buffers); its last checkpoint."""
    model, _, _ = fit(
        Recorder(scripted_val_loss=SCRIPT, batchnorm=True), ft_schedule=SCHEDULE, max_epochs=7, save_last=True
    )
    return model, tmp_path / "ckpts" / "last.ckpt"


def test_an_export_holds_every_weight_and_buffer_bit_for_bit_in_bounded_shards(trained, tmp_path: Path) -> None:
    model, checkpoint = trained
    done = export_checkpoint(checkpoint, tmp_path / "out", max_shard_size="400B")
    assert not done.unchecked and done.largest_shard_bytes <= 400
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    exported: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        exported |= load_file(tmp_path / "out" / shard)
    assert exported.keys() == model.state_dict().keys()  # norm.running_mean, num_batches_tracked included
    for name, value in model.state_dict().items():
        assert torch.equal(exported[name], value), name
    assert index["metadata"]["total_size"] == done.bytes


def test_one_file_a_cast_and_a_stripped_prefix(trained, tmp_path: Path) -> None:
    model, checkpoint = trained
    export_checkpoint(checkpoint, tmp_path / "model.safetensors", dtype="bfloat16", strip_prefix="layers.")
    exported = load_file(tmp_path / "model.safetensors")
    assert exported["0.weight"].dtype == torch.bfloat16
    assert torch.equal(exported["0.weight"], model.layers[0].weight.detach().to(torch.bfloat16))
    assert exported["norm.num_batches_tracked"].dtype == torch.int64  # only floating tensors are cast
    export_checkpoint(checkpoint, tmp_path / "weights.pt", format="torch")
    assert torch.load(tmp_path / "weights.pt").keys() == model.state_dict().keys()


def test_a_checkpoint_that_lacks_a_recorded_parameter_is_refused_naming_it(trained, tmp_path: Path) -> None:
    _, checkpoint = trained
    damaged = torch.load(checkpoint, weights_only=False)
    del damaged["state_dict"]["layers.0.weight"]  # a parameter frozen the whole run, lost by some saver
    torch.save(damaged, tmp_path / "damaged.ckpt")
    with pytest.raises(ExportError, match=r"lacks 1 of the model's 13 parameters and buffers: layers.0.weight"):
        export_checkpoint(tmp_path / "damaged.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_command_line_exports_and_inspects(trained, tmp_path: Path, capsys) -> None:
    _, checkpoint = trained
    assert main(["export", str(checkpoint), str(tmp_path / "cli"), "--max-shard-size", "1KB"]) == 0
    assert "wrote 13 tensors" in capsys.readouterr().out
    assert main(["ckpt", "inspect", str(checkpoint)]) == 0
    shown = capsys.readouterr().out
    assert "kind         file" in shown and "epoch, step  6, 28" in shown and "phase        2 of 2" in shown
    assert "group 2      lr=0.02" in shown  # phase 2's learning rate, from the schedule
    summary = inspect_checkpoint(checkpoint)
    assert summary.depth == 2 and summary.world_size == 1 and len(summary.groups) == 3
    assert set(summary.trainable) == {n for n, _ in Recorder(batchnorm=True).named_parameters()} - {
        "norm.weight",
        "norm.bias",
    }
    assert main(["export", str(tmp_path / "nothing.ckpt"), str(tmp_path / "x")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_load_pretrained_fills_a_meta_model_ties_it_again_and_names_what_the_file_lacks(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from fts_dist import load_pretrained
    from fts_dist.examples.causal_lm import CausalLM, build_config, save_pretrained_tiny

    directory = save_pretrained_tiny(tmp_path / "tiny")
    stored = load_file(directory / "model.safetensors")
    model = CausalLM().model  # on the meta device
    with pytest.raises(ExportError, match=r"non-persistent buffers \['model.rotary_emb.inv_freq'"):
        load_pretrained(model, directory)
    model = CausalLM().model
    done = load_pretrained(model, directory, init_buffers=CausalLM._rotary)
    assert len(done.loaded) == len(stored) == 20 and done.unexpected == []
    assert model.lm_head.weight is model.model.embed_tokens.weight  # to_empty untied them; tied again
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored.get(name, stored["model.embed_tokens.weight"])), name
    reference = AutoModelForCausalLM.from_pretrained(directory).eval()
    batch = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=batch).logits, reference(input_ids=batch).logits)
    with pytest.raises(ExportError, match=r"lacks 20 of the module's 20 parameters and buffers \(with prefix 'x.'\)"):
        load_pretrained(
            AutoModelForCausalLM.from_config(build_config(CausalLM().hparams.config)), directory, prefix="x."
        )
