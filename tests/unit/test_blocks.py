"""Block-wise schedule generation on four model families, from their parameter names alone (no option names a
layer): all-MiniLM-L6-v2 (BERT), EfficientNet-Lite0, torchvision's ResNet-18 and a GPT-2-style decoder."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
from torch import nn

from fts_dist import FTSConfigError, gen_block_schedule
from fts_dist.schedule import Schedule, find_blocks, generate_block_schedule, load_schedule, resolve_schedule

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="fts-dist[demo]")
needs_efficientnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None, reason="pip install fts-dist[test]"
)


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2's architecture from its packaged config (the weights are not needed for names)."""
    from transformers import AutoConfig, AutoModel

    from fts_dist.demo.model import pretrained_model_path

    return AutoModel.from_config(AutoConfig.from_pretrained(pretrained_model_path()), add_pooling_layer=False)


def efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def gpt2_style() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)  # lm_head is tied to wte: named_parameters() lists it once, as the embedding


class _BasicBlock(nn.Module):
    def __init__(self, width: int, downsample: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, bias=False), nn.BatchNorm2d(width)
        if downsample:
            self.downsample = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))


class _ResNet18Layout(nn.Module):
    """torchvision's ``resnet18()`` module tree at width 4 (same names, 62 tensors). torchvision's PyPI wheel is a
    CUDA build whose operators do not load against the CPU torch here (``operator torchvision::nms does not
    exist``); when torchvision imports, the test uses the real model instead."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 7, bias=False), nn.BatchNorm2d(4)
        for stage in range(1, 5):
            setattr(self, f"layer{stage}", nn.Sequential(_BasicBlock(4, stage > 1), _BasicBlock(4, False)))
        self.fc = nn.Linear(4, 10)


def resnet18() -> nn.Module:
    try:
        from torchvision.models import resnet18 as torchvision_resnet18
    except Exception:  # not installed, or its compiled operators do not load
        return _ResNet18Layout()
    return torchvision_resnet18()


FAMILIES: dict[str, tuple[Callable[[], nn.Module], str, int, list[str], list[str]]] = {
    # builder, container, blocks, stem, head
    "minilm": pytest.param(
        minilm,
        "encoder.layer.",
        6,
        [f"embeddings.{n}_embeddings.weight" for n in ("word", "position", "token_type")],
        [],
        marks=needs_transformers,
    ),
    "efficientnet-lite0": pytest.param(
        efficientnet_lite0,
        "_blocks.",
        16,
        ["_conv_stem.weight", "_bn0.weight", "_bn0.bias"],
        ["_conv_head.weight", "_bn1.weight", "_bn1.bias", "_fc.weight", "_fc.bias"],
        marks=needs_efficientnet,
    ),
    "resnet18": pytest.param(
        resnet18, "layer", 4, ["conv1.weight", "bn1.weight", "bn1.bias"], ["fc.weight", "fc.bias"]
    ),
    "gpt2-style": pytest.param(
        gpt2_style,
        "transformer.h.",
        4,
        ["transformer.wte.weight", "transformer.wpe.weight"],
        ["transformer.ln_f.weight", "transformer.ln_f.bias"],
        marks=needs_transformers,
    ),
}


@pytest.mark.parametrize(("build", "container", "blocks", "stem", "head"), FAMILIES.values(), ids=FAMILIES.keys())
def test_blocks_are_found_without_names_given(
    build: Callable[[], nn.Module], container: str, blocks: int, stem: list[str], head: list[str]
) -> None:
    names = [name for name, _ in build().named_parameters()]
    layout = find_blocks(names)
    assert layout.container == container
    assert [index for index, _ in layout.blocks] == sorted(index for index, _ in layout.blocks)
    assert len(layout.blocks) == blocks
    assert all(name.startswith(f"{container}{index}.") for index, members in layout.blocks for name in members)
    assert list(layout.stem[: len(stem)]) == stem and list(layout.head) == head


@pytest.mark.parametrize(("build", "container", "blocks", "stem", "head"), FAMILIES.values(), ids=FAMILIES.keys())
def test_the_generated_schedule_thaws_head_blocks_from_the_top_then_stem(
    build: Callable[[], nn.Module], container: str, blocks: int, stem: list[str], head: list[str]
) -> None:
    names = [name for name, _ in build().named_parameters()]
    schedule = generate_block_schedule(names, blocks_per_phase=2, lr=1e-4, lr_decay=0.5, epochs_per_phase=2)
    resolved = resolve_schedule(schedule, names)
    assert resolved.unscheduled == ()  # every parameter thaws, once (resolution refuses a parameter twice)
    phases = resolved.schedule.phases
    layout = find_blocks(names)
    top_down = [set(members) for _, members in reversed(layout.blocks)]
    pairs = [top_down[i].union(*top_down[i + 1 : i + 2]) for i in range(0, blocks, 2)]
    assert [set(p.params) for p in phases] == [*([set(head)] if head else []), *pairs, set(layout.stem)]
    assert [p.lr for p in phases] == pytest.approx([None, *(1e-4 * 0.5**d for d in range(len(phases) - 1))])
    assert [p.max_transition_epoch for p in phases] == [2 * (d + 1) for d in range(len(phases))]


def test_a_model_without_repeated_blocks_is_refused_with_the_alternatives() -> None:
    with pytest.raises(FTSConfigError, match=r"no repeated blocks .* use the implicit one"):
        find_blocks(["encoder.weight", "decoder.weight", "head.bias"])
    with pytest.raises(FTSConfigError, match="lr_decay needs lr"):
        generate_block_schedule(["layer.0.w", "layer.1.w"], lr_decay=0.5)


def test_gen_block_schedule_writes_a_file_the_callback_loads(tmp_path) -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    path = gen_block_schedule(net, tmp_path, lr=1e-3, lr_decay=0.1)
    names = [name for name, _ in net.named_parameters()]
    resolved = load_schedule(path, names).schedule
    # no head or stem: the top block is phase 0 (at the optimizer's lr), lr and its decay start at phase 1
    assert [p.params for p in resolved.phases] == [
        ("4.weight", "4.bias"),
        ("2.weight", "2.bias"),
        ("0.weight", "0.bias"),
    ]
    assert [p.lr for p in Schedule.from_dict(resolved.to_dict()).phases] == pytest.approx([None, 1e-3, 1e-4])
    assert path.name == "Sequential_ft_schedule.yaml"


@needs_transformers
def test_the_demo_block_schedule_is_head_layer_pairs_from_the_top_then_embeddings() -> None:
    from fts_dist.demo.run import BLOCK_OPTIONS, block_schedule

    demo_like = nn.Module()
    demo_like.backbone, demo_like.head = minilm(), nn.Linear(384, 5)
    schedule = Schedule.from_dict(block_schedule(demo_like, lr=5e-5))
    layers = BLOCK_OPTIONS["blocks_per_phase"]
    top = range(5, -1, -1)
    top_down = [[rf"backbone\.encoder\.layer\.{i}\." for i in top[s : s + layers]] for s in range(0, 6, layers)]
    assert [list(p.params) for p in schedule.phases[1:-1]] == top_down
    assert schedule[0].params == ("head.weight", "head.bias") and schedule[-1].params[0].startswith("backbone.embed")
