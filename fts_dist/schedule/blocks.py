"""Block-wise schedules: find a model's repeated blocks from its parameter names and thaw them from the top.

A model's repeated blocks show in its parameter names as one container with numbered children
(``encoder.layer.0.``, ``transformer.h.11.``, ``_blocks.15.``) or as numbered siblings (torchvision's ResNet
stages ``layer1.`` .. ``layer4.``). :func:`find_blocks` takes the container that holds the most parameter tensors;
what comes before its first block is the stem (embeddings, a stem convolution), what comes after its last block is
the head. :func:`generate_block_schedule` then writes the schedule practitioners write by hand: the head first, one
phase per block (or per ``blocks_per_phase`` blocks) from the top, the stem last, each phase's learning rate
decayed from the phase above (layer-wise learning-rate decay, as in ULMFiT's discriminative fine-tuning).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from fts_dist.errors import FTSConfigError
from fts_dist.schedule.model import Phase, Schedule

# ``layer4`` -> ("layer", 4); ``encoder_layer_11`` -> ("encoder_layer_", 11); ``7`` -> ("", 7)
_NUMBERED = re.compile(r"^(?P<stem>\D*?)(?P<index>\d+)$")
_MIN_BLOCKS = 2


@dataclass(frozen=True)
class BlockLayout:
    """A model's parameter names split around its repeated blocks.

    ``container`` is the blocks' common name prefix with the index left out (``backbone.encoder.layer.`` for
    ``backbone.encoder.layer.3.``, ``layer`` for ``layer3.``); ``blocks`` holds each block's index and parameter
    names, lowest index (nearest the input) first.
    """

    container: str
    stem: tuple[str, ...]
    blocks: tuple[tuple[int, tuple[str, ...]], ...]
    head: tuple[str, ...]

    def block_pattern(self, index: int) -> str:
        """The regular expression (``re.match``) for block ``index``'s parameters: ``layer\\.3\\.``."""
        return re.escape(f"{self.container}{index}.")


def find_blocks(param_names: Sequence[str]) -> BlockLayout:
    """Split ``param_names`` (in ``named_parameters()`` order) into stem, repeated blocks and head.

    Every name component that is a number, or ends in one, marks a candidate container: the name up to that
    component, with the number left out. The candidate with at least two distinct indices that holds the most
    tensors wins (the shallower one on a tie). A parameter outside the blocks belongs to the stem when no block
    parameter precedes it, to the head when none follows it, and otherwise to the block it follows.

    Raises:
        FTSConfigError: no component of any name is numbered at least twice alike (no repeated blocks).

    Example::

        >>> layout = find_blocks(["emb.w", "layer.0.w", "layer.1.w", "norm.w", "head.w"])
        >>> layout.stem, [i for i, _ in layout.blocks], layout.head
        (('emb.w',), [0, 1], ('norm.w', 'head.w'))
    """
    container = _busiest_container(param_names)
    index_of = {name: index for name in param_names if (index := _block_index(name, container)) is not None}
    positions = [pos for pos, name in enumerate(param_names) if name in index_of]
    first, last = positions[0], positions[-1]
    stem = tuple(param_names[:first])
    head = tuple(name for name in param_names[last + 1 :])
    members: dict[int, list[str]] = defaultdict(list)
    current = index_of[param_names[first]]
    for name in param_names[first : last + 1]:
        current = index_of.get(name, current)
        members[current].append(name)
    blocks = tuple((index, tuple(members[index])) for index in sorted(members))
    return BlockLayout(container=container, stem=stem, blocks=blocks, head=head)


def generate_block_schedule(
    param_names: Sequence[str],
    *,
    blocks_per_phase: int = 1,
    lr: float | None = None,
    lr_decay: float = 1.0,
    epochs_per_phase: int | None = None,
) -> Schedule:
    """The block-wise schedule of a model with parameters ``param_names``.

    Phase 0 thaws the head; then each phase thaws the next ``blocks_per_phase`` blocks down from the top; the last
    phase thaws the stem. Phase 1 trains at ``lr`` and each later phase at ``lr_decay`` times the phase above it
    (phase 0 takes the optimizer's own learning rate; ``lr=None`` leaves every phase to ``base_max_lr``). With
    ``epochs_per_phase``, phase ``d`` ends at epoch ``(d + 1) * epochs_per_phase`` at the latest.

    Example::

        >>> names = ["emb.w", "layer.0.w", "layer.1.w", "layer.2.w", "head.w"]
        >>> schedule = generate_block_schedule(names, blocks_per_phase=2, lr=1e-4, lr_decay=0.5)
        >>> [(p.params, p.lr) for p in schedule.phases]  # doctest: +NORMALIZE_WHITESPACE
        [(('head.w',), None), (('layer\\\\.2\\\\.', 'layer\\\\.1\\\\.'), 0.0001), (('layer\\\\.0\\\\.',), 5e-05),
         (('emb.w',), 2.5e-05)]
    """
    _check_generation_options(blocks_per_phase, lr, lr_decay, epochs_per_phase)
    layout = find_blocks(param_names)
    top_first = [index for index, _ in reversed(layout.blocks)]
    groups = [
        tuple(layout.block_pattern(i) for i in top_first[start : start + blocks_per_phase])
        for start in range(0, len(top_first), blocks_per_phase)
    ]
    phase_params = [layout.head, *groups, layout.stem]
    phase_params = [params for params in phase_params if params]  # a model without head or stem
    phases = []
    for depth, params in enumerate(phase_params):
        phase_lr = None if depth == 0 or lr is None else float(f"{lr * lr_decay ** (depth - 1):.6g}")
        epoch = -1 if epochs_per_phase is None else (depth + 1) * epochs_per_phase
        phases.append(Phase(params=params, max_transition_epoch=epoch, lr=phase_lr))
    return Schedule(tuple(phases))


def _busiest_container(param_names: Sequence[str]) -> str:
    tensors: dict[str, int] = defaultdict(int)
    indices: dict[str, set[int]] = defaultdict(set)
    for name in param_names:
        for container, index in _candidates(name):
            tensors[container] += 1
            indices[container].add(index)
    repeated = [c for c in tensors if len(indices[c]) >= _MIN_BLOCKS]
    if not repeated:
        raise FTSConfigError(
            f"Found no repeated blocks in the model's parameter names (e.g. {list(param_names)[:3]}): no name part "
            "is numbered, like `layer.0.` or `layer1.`, twice alike. Write the schedule by hand, or use the implicit "
            "one (`fts-dist schedule gen` without `--blocks`).",
            key="params",
        )
    return max(repeated, key=lambda c: (tensors[c], -c.count(".")))


def _candidates(name: str) -> list[tuple[str, int]]:
    """Each (container, index) the name could be a block member of: one per numbered component but the last."""
    parts = name.split(".")
    found = []
    for position, part in enumerate(parts[:-1]):  # the last part names the tensor itself
        match = _NUMBERED.match(part)
        if match:
            prefix = "".join(p + "." for p in parts[:position])
            found.append((prefix + match["stem"], int(match["index"])))
    return found


def _block_index(name: str, container: str) -> int | None:
    return next((index for c, index in _candidates(name) if c == container), None)


def _check_generation_options(
    blocks_per_phase: int, lr: float | None, lr_decay: float, epochs_per_phase: int | None
) -> None:
    if blocks_per_phase < 1:
        raise FTSConfigError(f"blocks_per_phase must be at least 1, got {blocks_per_phase}.", key="blocks_per_phase")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise FTSConfigError(f"lr must be a positive number, got {lr}.", key="lr")
    if not (math.isfinite(lr_decay) and 0 < lr_decay <= 1):
        raise FTSConfigError(
            f"lr_decay must be in (0, 1]: each deeper phase trains at lr_decay times the phase above; got {lr_decay}.",
            key="lr_decay",
        )
    if lr_decay != 1.0 and lr is None:
        raise FTSConfigError("lr_decay needs lr: the learning rate of phase 1, which deeper phases decay from.")
    if epochs_per_phase is not None and epochs_per_phase < 1:
        raise FTSConfigError(f"epochs_per_phase must be at least 1, got {epochs_per_phase}.", key="epochs_per_phase")
