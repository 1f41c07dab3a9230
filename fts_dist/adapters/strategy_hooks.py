"""Wrapping a Lightning strategy's own methods, where an adapter must act inside a step Lightning runs.

Each wrapper wraps the method of the strategy's class, never what the instance holds now, so a second
``Trainer.fit`` (a new adapter on the same strategy) replaces the wrapper instead of nesting another one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl


def lightning_method(strategy: pl.strategies.Strategy, name: str) -> Callable[..., Any]:
    """The strategy class's own ``name``, bound to ``strategy`` (whatever wrapper the instance holds)."""
    method: Callable[..., Any] = getattr(type(strategy), name).__get__(strategy, type(strategy))
    return method


def wrap_lightning_method(
    strategy: pl.strategies.Strategy, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Make ``strategy.name`` call ``wrapper(the class's own method)``."""
    setattr(strategy, name, wrapper(lightning_method(strategy, name)))
