"""Activation bytes per phase, traced rather than guessed: the tensors autograd saves for backward in one step.

A phase's frozen prefix saves nothing (no tensor before the first trainable parameter needs a gradient), so the same
batch costs less in early phases than in full fine-tuning. :class:`SavedTensors` counts what autograd saves, the
parameters aside (they are held anyway); :func:`trace_activations` runs that count over a model built on the meta
device, with fake tensors (``FakeTensorMode``) standing in for its parameters and the batch, once per phase: no
storage is allocated, so a 70B model traces on a laptop. The same counter measures a real run (tests hold the two
against each other on 2 ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from typing_extensions import override

Step = Callable[[torch.nn.Module, Any], Any]


class SavedTensors:
    """Bytes of the distinct storages autograd saves for backward inside ``with``, parameters (and views of them,
    such as a Linear's transposed weight) aside.

    Example::

        >>> layer = torch.nn.Linear(4, 3)
        >>> with SavedTensors() as saved:
        ...     _ = layer(torch.randn(2, 4, requires_grad=True))
        >>> saved.nbytes  # the input, 2 x 4 fp32 (the weight is a parameter)
        32
    """

    def __init__(self) -> None:
        self.nbytes = 0
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, torch.nn.Parameter) or isinstance(tensor._base, torch.nn.Parameter):
            return tensor
        storage = tensor.untyped_storage()
        key = storage._cdata  # a saved storage lives until backward: its address is not reused meanwhile
        if key not in self._seen:
            self._seen.add(key)
            self.nbytes += storage.nbytes()
        return tensor


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def trace_activations(
    model: torch.nn.Module,
    batch: Any,
    trainable_sets: Sequence[Iterable[str]],
    *,
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
    step: Step | None = None,
) -> list[int]:
    """The bytes one step saves for backward, for each set of trainable parameter names.

    ``model`` may live on the meta device; ``batch`` is a tensor, or a tuple, list or dict of them (their shapes and
    dtypes are used, never their values). ``step(model, batch)`` runs what the training step runs (default: the
    forward, ``model(batch)``, ``model(*batch)`` or ``model(**batch)``; pass one that computes the loss to count its
    saved tensors too). Weights are ``dtype``; ``autocast`` traces under CPU autocast to that dtype (the ops it
    casts are the same lists on every device type, near enough for a plan)."""
    with FakeTensorMode(allow_non_fake_inputs=False):
        tensors = _fake_state(model, dtype)
        fake_batch = _fake(batch, dtype)  # bf16-true converts floating inputs, as Lightning's precision does
        wrapper = _Step(model, step)
        totals = []
        for trainable in trainable_sets:
            names = set(trainable)
            for name, param in tensors.items():
                if isinstance(param, torch.nn.Parameter):
                    param.requires_grad_(name in names)
            with SavedTensors() as saved, _autocast(autocast), torch.enable_grad():
                functional_call(wrapper, {f"inner.{k}": v for k, v in tensors.items()}, (fake_batch,))
            totals.append(saved.nbytes)
    return totals


class _Step(torch.nn.Module):
    """``step(model, batch)`` as a module's forward, so ``functional_call`` can stand the fake state in."""

    def __init__(self, model: torch.nn.Module, step: Step | None) -> None:
        super().__init__()
        self.inner = model
        self.step = step or _forward

    @override
    def forward(self, batch: Any) -> Any:
        return self.step(self.inner, batch)


def _forward(model: torch.nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _fake_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fake CPU parameters (``dtype`` where floating) and buffers in the shapes of ``model``'s."""
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        width = dtype if param.dtype.is_floating_point else param.dtype
        state[name] = torch.nn.Parameter(torch.empty(param.shape, dtype=width), requires_grad=False)
    for name, buffer in model.named_buffers():
        state[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
    return state


def _fake(value: Any, dtype: torch.dtype) -> Any:
    """Fake tensors in ``value``'s shapes; floating ones in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=dtype if value.dtype.is_floating_point else value.dtype)
    if isinstance(value, Mapping):
        return {key: _fake(item, dtype) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_fake(item, dtype) for item in value)
    return value


@contextlib.contextmanager
def _autocast(dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast("cpu", dtype=dtype):
        yield
