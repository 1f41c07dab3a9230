"""The causal-LM recipe (``fts_dist.examples.causal_lm``, ``examples/llm/``) on 2 CPU ranks under FSDP2 and
ZeRO-3: pretrained weights loaded into the sharded model from the meta device (FSDP2) or into ZeRO-3 partitions,
each rank reading its part, match the file; the block-wise schedule runs through its transitions; the final
checkpoint, exported with ``--format hf``, gives the module's logits through ``from_pretrained``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.reliability.driver import start

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.timeout(400),
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="pip install fts-dist[demo]"),
]
WORKER = Path(__file__).parent / "workers" / "llm_recipe.py"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama saved as Hugging Face saves one, and its block-wise schedule (a phase each epoch; the
    scheduler raises max_epochs to the last phase's 4)."""
    from fts_dist import gen_block_schedule
    from fts_dist.examples.causal_lm import CausalLM, save_pretrained_tiny

    directory = save_pretrained_tiny(tmp_path_factory.mktemp("pretrained") / "tiny-llama")
    schedule = gen_block_schedule(CausalLM(), directory.parent, epochs_per_phase=1)
    return directory, schedule


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_pretrained_weights_load_shard_by_shard_train_through_transitions_and_export_for_from_pretrained(
    tmp_path: Path, pretrained: tuple[Path, Path], strategy: str
) -> None:
    from transformers import AutoModelForCausalLM

    from fts_dist.export import export_checkpoint

    directory, schedule = pretrained
    run = start(tmp_path, 2, "--strategy", strategy, "--pretrained", str(directory), "--schedule", str(schedule),
                worker=WORKER, timeout_s=300)  # fmt: skip
    assert run.returncode == 0, run.output[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for result in ranks:
        assert result["loaded"] == 20 and result["max_diff"] == 0.0  # every tensor, exactly the file's
        assert result["depth"] == 3  # the final norm, each decoder layer from the top, then the embeddings
    assert "phase 3 of 3 begins at epoch 3: 21,664 trainable parameters in 20 tensors, 4 optimizer groups" in run.output

    exported = tmp_path / "hf"
    done = export_checkpoint(tmp_path / "final.ckpt", exported, format="hf", hf_config=directory, strip_prefix="model.")
    assert not done.unchecked and (exported / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # tied again by its config
    with torch.no_grad():
        logits = reloaded(input_ids=torch.tensor(FIXED_BATCH_VALUES)).logits
    torch.testing.assert_close(logits, ranks[0]["logits"], rtol=0, atol=1e-5)


FIXED_BATCH_VALUES = (torch.arange(24).reshape(2, 12) * 5 % 96).tolist()  # the worker's FIXED_BATCH
