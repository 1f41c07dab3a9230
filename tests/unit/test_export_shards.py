"""How an export splits tensors into files (``fts_dist.export.shards``) and which names it must write
(``fts_dist.export.names``)."""

from __future__ import annotations

import pytest
import torch

from fts_dist.export.names import clean_name, model_names, persistent_buffer_names, recorded_model_names
from fts_dist.export.shards import index, parse_size, plan_shards, shard_file_names


def test_sizes_read_as_hugging_face_reads_them() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("1.5KB") == 1500
    assert parse_size(600) == 600 and parse_size("600") == 600
    with pytest.raises(ValueError, match="not a size: '5 parsecs'"):
        parse_size("5 parsecs")


def test_shards_keep_order_stay_under_the_limit_and_a_larger_tensor_gets_its_own() -> None:
    sizes = {"a": 40, "b": 40, "c": 30, "huge": 500, "d": 10}
    assert plan_shards(sizes, 100) == [["a", "b"], ["c"], ["huge"], ["d"]]
    assert plan_shards(sizes, 10**6) == [["a", "b", "c", "huge", "d"]]
    assert plan_shards({}, 100) == []
    assert shard_file_names(1) == ["model.safetensors"]
    assert shard_file_names(3)[1] == "model-00002-of-00003.safetensors"
    written = index([["a", "b"], ["c"]], ["one", "two"], 110)
    assert written == {"metadata": {"total_size": 110}, "weight_map": {"a": "one", "b": "one", "c": "two"}}


def test_the_names_a_checkpoint_must_hold_are_parameters_and_persistent_buffers() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    module.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert persistent_buffer_names(module) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    names = model_names(["_fsdp_wrapped_module.0.weight", "0.bias"], module)
    assert names["parameters"] == ["0.weight", "0.bias"]
    assert clean_name("blocks.0._checkpoint_wrapped_module.mlp._orig_mod.w") == "blocks.0.mlp.w"
    metadata = {"callbacks": {"FinetuningScheduler": {"depth": 1, "model_names": names}, "Other": {}}}
    assert recorded_model_names(metadata) == names and recorded_model_names({}) is None
