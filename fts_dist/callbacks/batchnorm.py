"""What frozen BatchNorm layers do while the rest of the model trains: track running statistics or not, train or eval.

A BatchNorm layer is frozen while none of its own parameters requires grad (one without parameters always is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class FrozenBatchNormPolicy:
    """Applied after every change of the trainable set (and at every epoch start, after Lightning's mode switches).

    Args:
        track_running_stats: frozen layers keep updating their running statistics in training, as any layer does
            (finetuning-scheduler's default). ``False``: they stop, as after Lightning's ``BaseFinetuning.freeze``,
            and normalise with batch statistics in training, until their phase thaws them.
        eval_mode: frozen layers stay in eval mode while training: they normalise with their running statistics and
            leave them unchanged (on a small fine-tuning set, batch statistics from a different distribution hurt
            a pretrained network most).

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).requires_grad_(False)
        >>> FrozenBatchNormPolicy(track_running_stats=True, eval_mode=True).apply(net)
        >>> net[1].training, net[0].training
        (False, True)
    """

    track_running_stats: bool = True
    eval_mode: bool = False
    _tracked_before: dict[int, bool] = field(default_factory=dict, repr=False)  # each layer's own setting
    _held_in_eval: set[int] = field(default_factory=set, repr=False)

    def apply(self, module: torch.nn.Module) -> None:
        """Set every BatchNorm layer of ``module`` by whether it is frozen now."""
        for layer in module.modules():
            if not isinstance(layer, _BatchNorm):
                continue
            frozen = not any(p.requires_grad for p in layer.parameters(recurse=False))
            own = self._tracked_before.setdefault(id(layer), layer.track_running_stats)
            layer.track_running_stats = own and (self.track_running_stats or not frozen)
            if self.eval_mode and frozen:
                layer.train(False)
                self._held_in_eval.add(id(layer))
            elif id(layer) in self._held_in_eval:  # thawed: it trains like the layers around it
                layer.train(module.training)
                self._held_in_eval.discard(id(layer))
