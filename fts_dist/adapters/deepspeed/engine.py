"""Rebuilding a live DeepSpeed engine's ZeRO optimizer for a new trainable set, keeping what earlier groups hold.

DeepSpeed cannot add a parameter group to a built ZeRO optimizer, and ``requires_grad`` changes after
``deepspeed.initialize`` have no effect under ZeRO-3 (DeepSpeed issue 5639); calling ``initialize`` again on the
same module leaked the whole old engine through its forward hooks here (385 -> 1,373 MB in 25 re-initialisations,
ZeRO-3). So :func:`rebuild_zero_optimizer` replaces only the ZeRO optimizer, inside the engine, through the engine's
own optimizer-configuration path, in four steps:

1. hold on to what the kept groups own on this rank, at O(this rank's share):

   - a kept group whose members are unchanged (the common case: a phase only adds a group) partitions the same way
     in the new optimizer, so its flat fp32 partition and the optimizer state over it are handed over as they are,
     by reference (nothing is copied; ZeRO 1/2 also keep the group's flat bit16 buffer the weights live in);
   - a kept group that changed members (``freeze:``, or a restore that gives frozen parameters back) is snapshotted
     per parameter on the host, through DeepSpeed's tensor-fragment accessors (``safe_get_full_*`` under ZeRO 1/2,
     ``safe_get_local_*`` under ZeRO-3);

2. build a new basic optimizer of the same class over the new groups, ``destroy()`` the old ZeRO optimizer and
   collect it (its hooks hold it in a reference cycle: left to the collector, its buffers outlive the build), then
   ``engine._configure_optimizer`` (which partitions it: fp32 masters and state for trainable parameters only);
3. give the handed-over groups their partition and state, create the snapshotted groups' state (the optimizer creates
   it lazily, and ``safe_set_*`` needs it), re-arm stage 1/2's state linking, restore the snapshot, and push those
   masters back into the weights;
4. re-register the engine's gradient-accumulation hook, which the engine registers only once.

Measured on this machine (DeepSpeed 0.19.8, CPU, gloo, 2 ranks; tests/distributed/test_deepspeed_2proc.py): final
weights within 3e-8 of a one-process run on stages 1, 2 and 3 and with optimizer offload, restores of an earlier
phase included; fp32 masters plus Adam state trainable x 12 bytes / world in every phase. Everything here reaches
into DeepSpeed internals and is tied to the DeepSpeed versions this module is tested with.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fts_dist.optim.reinit import constructor_defaults


@dataclass
class _Saved:
    """One kept group: its settings, its state's scalar entries (Adam's ``step``), and per parameter the fp32
    master and per-element state entries (whole tensors under ZeRO 1/2, this rank's partition under ZeRO-3)."""

    settings: dict[str, Any]
    scalars: dict[str, Any]
    params: list[tuple[torch.nn.Parameter, dict[str, torch.Tensor]]]


def zero_stage(engine: Any) -> int:
    return int(engine.zero_optimization_stage())


def group_parameters(engine: Any) -> list[list[torch.nn.Parameter]]:
    """The model parameters of each optimizer group, in group order."""
    optimizer, stage = engine.optimizer, zero_stage(engine)
    if stage == 3:
        by_group: dict[int, list[torch.nn.Parameter]] = {}
        for sub_group, params in enumerate(optimizer.fp16_groups):
            by_group.setdefault(optimizer.sub_group_to_group_id[sub_group], []).extend(params)
        return [by_group[index] for index in sorted(by_group)]
    return [list(group) for group in optimizer.bit16_groups]


def flat_partitions(engine: Any) -> list[tuple[int, torch.Tensor]]:
    """``(group, this rank's flat fp32 master partition)`` for every partition the optimizer steps."""
    optimizer = engine.optimizer
    if zero_stage(engine) == 3:
        return [(optimizer.sub_group_to_group_id[i], t) for i, t in enumerate(optimizer.fp32_partitioned_groups_flat)]
    return list(enumerate(optimizer.single_partition_of_fp32_groups))


def state_bytes(engine: Any) -> int:
    """Bytes of fp32 masters and optimizer state (step counters aside) this rank holds."""
    basic = engine.optimizer.optimizer
    total = 0
    for _, flat in flat_partitions(engine):
        total += flat.nbytes
        total += sum(v.nbytes for k, v in basic.state.get(flat, {}).items() if torch.is_tensor(v) and v.dim() > 0)
    return total


def rebuild_zero_optimizer(
    engine: Any, groups: Sequence[dict[str, Any]], fresh: Callable[[list[dict[str, Any]]], Any] | None = None
) -> Any:
    """Collective: give ``engine`` a new ZeRO optimizer over ``groups`` (dicts with ``params`` and settings).

    The first groups are the optimizer's first groups: they keep their settings, and the parameters they keep keep
    their fp32 masters and optimizer state (step counts included). A kept group may lose parameters (frozen again:
    their weights stay as they are) or gain some (before a checkpoint load fills them). Later groups are new; the
    optimizer creates their state at its first step, as it would have. Groups the old optimizer had beyond
    ``len(groups)`` are dropped. With ``fresh`` (a factory over group dicts), the basic optimizer is ``fresh``'s, with
    its own settings: only the fp32 masters are kept (under bf16 or fp16 the weights alone would round them), every
    group's state starts anew. Parameters in no group are frozen. Call it at an optimizer-step boundary (no
    gradients pending). Returns the new ZeRO optimizer, also at ``engine.optimizer``.

    Memory: a kept group with unchanged members costs nothing beyond one new fp32 partition (its state is handed
    over); only a group that changed members is held a second time, on the host, while the optimizer is rebuilt
    (ZeRO 1/2 gather each of its parameters whole; ZeRO-3 keeps to its own partitions).
    """
    old_groups = group_parameters(engine)
    old_group_of = {id(p): index for index, params in enumerate(old_groups) for p in params}
    kept = min(len(set(old_group_of.values())), len(groups))
    for index, group in enumerate(groups):
        moved = [p for p in group["params"] if old_group_of.get(id(p), index) != index]
        if moved and fresh is None:
            raise ValueError(f"optimizer group {index} holds a parameter of group {old_group_of[id(moved[0])]}")
    unchanged = {i for i in range(kept) if _ids_in_order(groups[i]["params"]) == _ids_in_order(old_groups[i])}
    keep = {id(p) for i, group in enumerate(groups[:kept]) if i not in unchanged for p in group["params"]}
    saved = _snapshot(engine, kept, keep, masters_only=fresh is not None)
    handed = _hand_over_partitions(engine, unchanged, masters_only=fresh is not None)
    bit16_buffers = _bit16_buffers(engine, unchanged)
    new_groups = [
        {**group, **(saved[index].settings if index < kept and fresh is None else {}), "params": list(group["params"])}
        for index, group in enumerate(groups)
    ]
    if fresh is not None:
        basic = fresh(new_groups)
    else:
        basic = type(engine.optimizer.optimizer)(new_groups, **constructor_defaults(engine.optimizer.optimizer))
    engine.optimizer.destroy()
    engine.optimizer = engine.basic_optimizer = None
    gc.collect()  # the old optimizer sits in a reference cycle (its hooks): its buffers go now, not after the build
    trainable = {id(p) for group in new_groups for p in group["params"]}
    for param in engine.module.parameters():
        param.grad = None
        param.requires_grad_(id(param) in trainable)
    with _building_without_copies(bit16_buffers):
        engine._configure_optimizer(basic, [p for group in new_groups for p in group["params"]])
    del bit16_buffers
    _take_over(engine, handed)
    _restore(engine, saved)
    if getattr(engine, "_support_torch_style_backward", False):  # the engine registers it at __init__ only
        engine.optimizer.register_grad_acc_post_hook(engine._backward_post_hook)
    return engine.optimizer


def relink_after_load(engine: Any) -> None:
    """After ``engine.load_checkpoint``: stage 1/2 re-link their parameter mappings but not the optimizer state's
    (the "linked" flag stays set), so the state accessors fail (``TypeError: argument of type 'NoneType' is not
    iterable``) until it is re-armed."""
    if zero_stage(engine) in (1, 2):
        _link_state(engine)


@contextlib.contextmanager
def mapping_model_states(engine: Any) -> Iterator[None]:
    """While the engine loads a checkpoint: its model-states files are mapped (``torch.load(mmap=True)``), not read
    into each rank's memory. Under ZeRO 1/2 every rank reads the same whole-model file, which the ranks on a node
    then share through the page cache; the module copies its weights out of the mapping. The optimizer-state files
    (each rank's own partitions, which ZeRO keeps) are read as before."""
    checkpoint_engine = engine.checkpoint_engine
    load = checkpoint_engine.load
    if "load" in vars(checkpoint_engine):  # someone else's wrapper: leave it alone
        yield
        return

    def mapped_load(path: str, map_location: Any = None) -> Any:
        if not str(path).endswith("model_states.pt"):
            return load(path, map_location=map_location)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=True)

    checkpoint_engine.load = mapped_load
    try:
        yield
    finally:
        del checkpoint_engine.load  # the class's method again


def trim_host_memory() -> None:
    """Return freed memory to the system (for measuring what a rebuild keeps, not for correctness)."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _snapshot(engine: Any, kept: int, keep: set[int], masters_only: bool = False) -> list[_Saved]:
    """The first ``kept`` groups' settings and, for their parameters in ``keep`` (by id), masters and state.
    Collective under ZeRO 1/2 (each parameter gathered whole); local under ZeRO-3."""
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_full_optimizer_state,
        safe_get_local_fp32_param,
        safe_get_local_optimizer_state,
    )

    local = zero_stage(engine) == 3
    if not local:  # ZeRO 1/2 map each parameter onto the optimizer state as it was at its last link: map it anew
        _link_state(engine)
    basic = engine.optimizer.optimizer
    states: dict[int, dict[str, Any]] = {}
    for group, flat in flat_partitions(engine):
        states.setdefault(group, {}).update(basic.state.get(flat, {}))
    saved = []
    for index, params in enumerate(group_parameters(engine)[:kept]):
        state = states.get(index, {})
        state = {} if masters_only else state  # a fresh optimizer: the masters alone
        keys = [k for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0]
        scalars = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items() if k not in keys}
        tensors = []
        for param in (p for p in params if id(p) in keep):
            entry = {"master": safe_get_local_fp32_param(param) if local else safe_get_full_fp32_param(param)}
            for key in keys:
                get = safe_get_local_optimizer_state if local else safe_get_full_optimizer_state
                entry[key] = get(param, key)
            tensors.append((param, {k: v.detach().to("cpu", copy=True) for k, v in entry.items()}))
        settings = {k: v for k, v in engine.optimizer.param_groups[index].items() if k != "params"}
        saved.append(_Saved(settings, scalars, tensors))
    return saved


@dataclass
class _Handed:
    """A kept group with unchanged members: per flat fp32 partition of it on this rank (one per ZeRO-3 sub-group),
    its size, the partition itself (``None`` where the weights hold the same values) and the optimizer state over it,
    taken from the old optimizer by reference."""

    group: int
    partitions: list[tuple[int, torch.Tensor | None, dict[str, Any]]]


def _hand_over_partitions(engine: Any, groups: set[int], masters_only: bool) -> list[_Handed]:
    basic, stage = engine.optimizer.optimizer, zero_stage(engine)
    weights = {i: params[0].dtype for i, params in enumerate(group_parameters(engine)) if params}
    handed: dict[int, _Handed] = {}
    for group, flat in flat_partitions(engine):
        if group in groups:
            flat.grad = None  # the old optimizer's gradient partition goes with it
            state = {} if masters_only else basic.state.get(flat, {})
            # ZeRO 1/2 copy each step's fp32 partition into weights of the same dtype: the new optimizer's partition,
            # cloned from the weights, holds the same values, and the old one can go before it is built
            master = None if stage in (1, 2) and weights.get(group) == flat.dtype else flat
            handed.setdefault(group, _Handed(group, [])).partitions.append((flat.numel(), master, state))
    return list(handed.values())


def _take_over(engine: Any, handed: list[_Handed]) -> None:
    """The new optimizer partitions an unchanged group exactly as the old one did: its fp32 partitions take the old
    values (under bf16 the weights alone would round them) and the old state, as it is."""
    basic = engine.optimizer.optimizer
    new: dict[int, list[torch.Tensor]] = {}
    for group, flat in flat_partitions(engine):
        new.setdefault(group, []).append(flat)
    for entry in handed:
        flats = new.get(entry.group, [])
        if [f.numel() for f in flats] != [numel for numel, _, _ in entry.partitions]:
            raise RuntimeError(f"fts_dist: ZeRO partitioned optimizer group {entry.group} anew differently")
        for flat, (_, old, state) in zip(flats, entry.partitions, strict=True):
            if old is not None and flat is not old:
                flat.data.copy_(old)
            if state:
                basic.state[flat] = state
        entry.partitions.clear()


def _bit16_buffers(engine: Any, groups: set[int]) -> dict[tuple[int, ...], torch.Tensor]:
    """ZeRO 1/2: the flat bit16 buffer each unchanged group's weights live in, by the group's parameters (as
    ZeRO flattens them), for :func:`_building_without_copies`."""
    if zero_stage(engine) == 3:
        return {}
    optimizer = engine.optimizer
    return {
        _ids_in_order(optimizer.round_robin_bit16_groups[i]): optimizer.bit16_groups_flat[i]
        for i in groups
        if i < len(optimizer.bit16_groups_flat)
    }


@contextlib.contextmanager
def _building_without_copies(buffers: dict[tuple[int, ...], torch.Tensor]) -> Iterator[None]:
    """While a ZeRO optimizer builds inside a live engine, leave out two allocations of DeepSpeed's own build:

    - ZeRO 1/2: flattening a group whose weights already live, in the same order, in a flat buffer laid out as ZeRO
      lays it out returns that buffer instead of a copy of the whole group (on every rank: O(group), not
      O(group / world));
    - every stage, without optimizer offload: the gradient buffers ``initialize_optimizer_states`` allocates for the
      fp32 partitions (ZeRO 1/2 drop them at once; ZeRO-3 keeps one as large as the largest whole sub-group until the
      first step, which sets each partition's gradient itself). Its other work (Adagrad's state, offload and swap
      buffers) is kept where it applies.
    """
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    flatten_aligned = DeepSpeedZeroOptimizer.flatten_dense_tensors_aligned
    initialize = {
        cls: cls.initialize_optimizer_states for cls in (DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3)
    }

    def flatten(
        self: Any, tensor_list: Any, alignment: int, use_cpu_data: bool = False, param_padding: Any = None
    ) -> Any:
        buffer = None if use_cpu_data else buffers.pop(_ids_in_order(tensor_list), None)
        numel = sum(t.numel() for t in tensor_list) + sum(param_padding or [])
        if buffer is not None and buffer.numel() == -(-numel // alignment) * alignment:
            return buffer
        return flatten_aligned(self, tensor_list, alignment, use_cpu_data, param_padding)

    def initialize_without_gradients(self: Any) -> None:
        offloaded = getattr(self, "cpu_offload", False) or getattr(self, "offload_optimizer", False)
        if offloaded or getattr(self, "swap_optimizer", False) or isinstance(self.optimizer, torch.optim.Adagrad):
            initialize[next(cls for cls in initialize if isinstance(self, cls))](self)

    DeepSpeedZeroOptimizer.flatten_dense_tensors_aligned = flatten
    for cls in initialize:
        cls.initialize_optimizer_states = initialize_without_gradients
    try:
        yield
    finally:
        DeepSpeedZeroOptimizer.flatten_dense_tensors_aligned = flatten_aligned
        for cls, method in initialize.items():
            cls.initialize_optimizer_states = method
        buffers.clear()


def _ids_in_order(params: Sequence[torch.Tensor]) -> tuple[int, ...]:
    return tuple(id(p) for p in params)


def _restore(engine: Any, saved: list[_Saved]) -> None:
    """Give the kept groups their state back (created first: the optimizer creates it lazily, and the setters
    need it), and push the masters into the weights the module computes with."""
    from deepspeed.utils import safe_get_local_fp32_param

    stage, basic = zero_stage(engine), engine.optimizer.optimizer
    for group, flat in flat_partitions(engine):
        if group < len(saved) and saved[group].params and len(saved[group].params[0][1]) > 1:
            keys = [k for k in saved[group].params[0][1] if k != "master"]
            basic.state[flat] = {**{k: torch.zeros_like(flat) for k in keys}, **_copies(saved[group].scalars)}
    if stage in (1, 2):
        _link_state(engine)  # map each parameter onto the state just made
    for entry in saved:
        for param, tensors in entry.params:
            for key, value in tensors.items():
                _set(engine, param, value, None if key == "master" else key)
            if stage == 3:  # the weights the module computes with: this rank's partition, and the whole if gathered
                param.ds_tensor.data.copy_(safe_get_local_fp32_param(param).to(param.ds_tensor.dtype))  # type: ignore[attr-defined]
                if param.data.numel() == param.ds_numel:  # type: ignore[attr-defined]
                    whole = engine.optimizer.get_full_hp_param(param)
                    param.data.copy_(whole.view(param.ds_shape).to(param.dtype))  # type: ignore[attr-defined]
            else:
                param.data.copy_(tensors["master"].view_as(param).to(param.dtype))


def _link_state(engine: Any) -> None:
    """ZeRO 1/2: map every parameter onto its group's optimizer state as it is now. DeepSpeed links once, after
    its first per-group step, when later groups may have no state yet; new groups' state comes at their first step,
    after a rebuild, so the mapping is made again before it is read."""
    engine.optimizer._hp_optimizer_states_linked = False
    engine.optimizer._lazy_init_hp_params_optimizer_state()


def _copies(scalars: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in scalars.items()}


def _set(engine: Any, param: torch.nn.Parameter, value: torch.Tensor, key: str | None) -> None:
    """Set a parameter's fp32 master (``key=None``) or one optimizer state entry: whole under ZeRO 1/2, this rank's
    partition under ZeRO-3 (as :func:`_snapshot` took it)."""
    from deepspeed.utils import (
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
        safe_set_local_fp32_param,
        safe_set_local_optimizer_state,
    )

    local = zero_stage(engine) == 3
    if key is None:
        (safe_set_local_fp32_param if local else safe_set_full_fp32_param)(param, value)
    else:
        (safe_set_local_optimizer_state if local else safe_set_full_optimizer_state)(param, value, key)
