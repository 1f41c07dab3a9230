"""Memory plans (``fts_dist.memory``): each strategy's layout in bytes per rank, the plan over a schedule on the meta
device, budgets. The layouts are held against measured runs in tests/distributed."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fts_dist.errors import FTSConfigError
from fts_dist.memory import Layout, ParamShape, fit_to_budget, meta_device, over_budget, parse_bytes, plan_memory
from fts_dist.memory.activations import SavedTensors
from fts_dist.memory.layouts import ZeroBuckets, rank_bytes

# a 5 x 4 weight and a bias of 5 in unit "a"; a 3 x 4 weight in unit "b"
PARAMS = [ParamShape("a.w", (5, 4), "a"), ParamShape("a.b", (5,), "a"), ParamShape("b.w", (3, 4), "b")]


def test_ddp_holds_everything_whole_and_state_for_the_trainable_only() -> None:
    held = rank_bytes(Layout("ddp", 2), PARAMS, [["b.w"]])
    assert (held.params, held.grads, held.masters) == (37 * 4, 12 * 4, 0)
    assert held.optimizer_state == 12 * 4 * 2 + 4  # two fp32 moments, one step counter
    assert held.buffers == 12 * 4  # DDP's buckets


def test_fsdp2_shards_each_parameter_by_rows_rounding_up() -> None:
    held = rank_bytes(Layout("fsdp2", 2, optimizer="sgd"), PARAMS, [["a.w", "a.b"]])
    assert held.params == (3 * 4 + 3 + 2 * 4) * 4  # rows ceil(5/2)=3, ceil(5/2)=3, ceil(3/2)=2
    assert held.grads == (12 + 3) * 4 and held.optimizer_state == (12 + 3) * 4  # SGD: one momentum buffer


def test_fsdp1_shards_flat_units_and_keeps_a_whole_gradient_shard_for_a_partly_trainable_unit() -> None:
    held = rank_bytes(Layout("fsdp1", 2, optimizer="sgd"), PARAMS, [["a.b"]])
    # unit a: weight at 0..20, bias at 20..25 (16-byte aligned), padded to 26: 13 a rank; unit b: 12, 6 a rank
    assert held.params == (13 + 6) * 4
    assert held.grads == 13 * 4  # unit a's whole shard, though only its bias trains
    assert held.optimizer_state == 5 * 4  # rank 1 holds the bias (20..25) within its shard 13..26


def test_zero_stages_partition_what_they_promise() -> None:
    one, two = (rank_bytes(Layout(k, 2), PARAMS, [["a.w", "a.b"], ["b.w"]]) for k in ("zero1", "zero2"))
    # groups of 25 and 12 elements, padded to multiples of 4 (alignment 2 x world 2): 28 / 2 + 12 / 2 = 20 a rank
    assert one.params == two.params == 37 * 4 and one.masters == two.masters == 20 * 4
    assert one.grads == 37 * 4 and two.grads == 20 * 4  # ZeRO-1 keeps whole gradients, ZeRO-2 partitions them
    assert one.buffers == two.buffers == 2 * 200_000_000 * 4  # the reduce bucket, twice (overlap_comm)
    sharded = ZeroBuckets(reduce_bucket_size=10, param_persistence_threshold=5, prefetch_bucket_size=3)
    three = rank_bytes(Layout("zero3", 2, zero=sharded), PARAMS, [["b.w"]])
    # partitions 10 + 3 + 6, and a.b (5 elements, at the persistence threshold) whole besides its partition
    assert three.params == (10 + 3 + 6 + 5) * 4 and three.masters == 0  # fp32 weights are their own masters
    # the reduce bucket, and module a's 25 elements with the 3-element prefetch bucket, of 32 gathered
    assert three.buffers == (10 + 25 + 3) * 4
    assert rank_bytes(Layout("zero3", 2, param_bytes=2), PARAMS, [["b.w"]]).masters == 6 * 4
    config = ZeroBuckets.from_config({"stage": 2, "reduce_bucket_size": 100, "contiguous_gradients": False})
    assert config == ZeroBuckets(100, overlap_comm=False, contiguous_gradients=False)  # DeepSpeed's own defaults
    assert rank_bytes(Layout("zero2", 2, zero=config), PARAMS, [["b.w"]]).buffers == 0
    offloaded = rank_bytes(Layout("zero2", 2, offload=True), PARAMS, [["b.w"]])
    assert offloaded.masters == offloaded.optimizer_state == 0 and offloaded.host == 6 * 4 + 6 * 8 + 4


def tower() -> nn.Module:
    with meta_device():
        return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))


SCHEDULE = {0: {"params": ["2.*"]}, 1: {"params": ["1.*"]}, 2: {"params": ["0.*"], "freeze": ["1.*"]}}


def test_each_phase_counts_what_trains_then_and_a_refrozen_phase_drops_out() -> None:
    plan = plan_memory(SCHEDULE, tower(), "fsdp2", 2)
    assert [p.trainable_params for p in plan.phases] == [18, 90, 90]
    assert all(p.bytes_per_rank["activations"] is None for p in plan.phases)
    form = json.loads(plan.to_json())
    assert set(form) == {"phases", "world_size", "strategy", "assumptions"}
    assert set(form["phases"][0]["bytes_per_rank"]) == {
        "params", "grads", "masters", "optimizer_state", "buffers", "activations", "transition", "total"
    }  # fmt: skip


class Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Dropout(0.1), nn.Linear(16, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


GELU_SCHEDULE = {0: {"params": ["head.*"]}, 1: {"params": ["body.4.*"]}, 2: {"params": ["body.[0-2].*"]}}


def measured_activations(precision: str) -> list[int]:
    """What a real CPU forward saves for backward in each phase of GELU_SCHEDULE."""
    torch.manual_seed(0)
    model, x = Gelu(), torch.randn(6, 8)
    if precision == "bf16-true":
        model, x = model.bfloat16(), x.bfloat16()
    measured = []
    for trainable in (["head."], ["head.", "body.4."], ["head.", "body."]):
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(tuple(trainable)))
        with SavedTensors() as saved, torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
            model(x).sum().backward()
        measured.append(saved.nbytes)
    return measured


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_activations_traced_on_the_meta_device_match_a_real_forward_and_a_frozen_prefix_saves_less(
    precision: str,
) -> None:
    with meta_device():
        model, batch = Gelu(), torch.empty(6, 8)
    plan = plan_memory(GELU_SCHEDULE, model, "ddp", 1, batch=batch, precision=precision)
    traced = [p.bytes_per_rank["activations"] for p in plan.phases]
    measured = measured_activations(precision)
    assert traced == pytest.approx(measured, rel=0.15)
    assert measured[0] < measured[1] < measured[2]  # each thawed layer saves its input, and what lies above it
    states = plan.phases[2].bytes_per_rank
    assert states["total"] == sum(states[k] for k in ("params", "grads", "optimizer_state", "buffers")) + traced[2]
    assert any("traced per phase" in note for note in plan.assumptions)


def test_an_untraceable_batch_is_named_before_any_training() -> None:
    with meta_device():
        model = Gelu()
    with pytest.raises(FTSConfigError, match="could not trace activations"):
        plan_memory(GELU_SCHEDULE, model, "ddp", 1, batch=torch.empty(6, 5, device="meta"))


def test_zero_transitions_cost_a_new_partition_of_the_kept_groups() -> None:
    plan = plan_memory(SCHEDULE, tower(), "deepspeed", 2, zero_stage=2)
    assert plan.phases[0].bytes_per_rank["transition"] == 0
    assert plan.phases[1].bytes_per_rank["transition"] == 20 // 2 * 4  # phase 0's 18 elements, padded to 20
    assert plan_memory(SCHEDULE, tower(), "fsdp2", 2).phases[1].bytes_per_rank["transition"] == 0


def test_budgets_cut_a_schedule_before_the_first_phase_that_does_not_fit() -> None:
    roomy = plan_memory(SCHEDULE, tower(), "ddp", 1, budget="4KiB")
    assert roomy.budget == 4096 and not over_budget(roomy)
    tight = plan_memory(SCHEDULE, tower(), "ddp", 1, budget=roomy.phases[0].bytes_per_rank["total"])
    errors = over_budget(tight)
    assert len(errors) == 2 and errors[0].startswith("phase 1 needs")
    fitted, note = fit_to_budget(json.loads(json.dumps(SCHEDULE)), tight)
    assert list(fitted) == ["0"] and "stopped at phase 0" in note
    with pytest.raises(FTSConfigError, match="Phase 0 alone needs"):
        fit_to_budget(SCHEDULE, plan_memory(SCHEDULE, tower(), "ddp", 1, budget=100))


@pytest.mark.parametrize(("text", "size"), [("80GiB", 80 * 2**30), ("1.5 MB", 1_500_000), ("512", 512), ("2kib", 2048)])
def test_sizes_read_as_people_write_them(text: str, size: int) -> None:
    assert parse_bytes(text) == size


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(FTSConfigError, match="--zero-stage"):
        plan_memory(SCHEDULE, tower(), "deepspeed", 2)
    with pytest.raises(FTSConfigError, match="not one of"):
        plan_memory(SCHEDULE, tower(), "horovod", 2)
    with pytest.raises(FTSConfigError, match="cannot read"):
        parse_bytes("lots")


def test_a_70b_llama_shape_plans_from_the_meta_device() -> None:
    pytest.importorskip("transformers")
    from fts_dist.examples.llama import LLAMA_70B, LlamaLike

    with meta_device():
        model = LlamaLike(**LLAMA_70B)
    assert all(p.device.type == "meta" for p in model.parameters())
    schedule = {0: {"params": [r"model\.lm_head\..*"]}, 1: {"params": [r"model\.model\.layers\.79\..*"]}}
    tokens = torch.empty(1, 256, dtype=torch.long, device="meta")
    plan = plan_memory(schedule, model, "fsdp2", 16, precision="bf16-mixed", budget="80GiB", batch=tokens)
    total = sum(p.numel() for p in model.parameters())
    head, top = (p.bytes_per_rank["activations"] or 0 for p in plan.phases)
    assert 0 < head < top  # training the head saves its input; thawing the top layer saves that layer's inputs too
    assert 70e9 < total < 71e9
    assert plan.phases[0].bytes_per_rank["params"] == pytest.approx(total * 4 / 16, rel=0.01)
    assert plan.fits(1)
    assert torch.tensor(0).device.type == "cpu"  # the meta device was left behind
