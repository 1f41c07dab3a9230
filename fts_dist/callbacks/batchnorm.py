"""What frozen BatchNorm layers do while the rest of the model trains: track running statistics or not, train or eval.

A BatchNorm layer is frozen while none of its own parameters requires grad (one without parameters always is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class FrozenBatchNormPolicy:
    """Applied after every change of the trainable set; :meth:`hold` at every epoch and batch start.

    Args:
        track_running_stats: frozen layers keep updating their running statistics in training, as any layer does
            (finetuning-scheduler's default). ``False``: they stop, as after Lightning's ``BaseFinetuning.freeze``,
            and normalise with batch statistics in training, until their phase thaws them.
        eval_mode: frozen layers stay in eval mode while training: they normalise with their running statistics and
            leave them unchanged (on a small fine-tuning set, batch statistics from a different distribution hurt
            a pretrained network most).

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).requires_grad_(False)
        >>> policy = FrozenBatchNormPolicy(track_running_stats=True, eval_mode=True)
        >>> policy.apply(net)
        >>> policy.hold()
        >>> net[1].training, net[0].training
        (False, True)
    """

    track_running_stats: bool = True
    eval_mode: bool = False
    _own_tracking: dict[str, bool] = field(default_factory=dict, repr=False)  # each layer's own setting, by name
    _held: list[_BatchNorm] = field(default_factory=list, repr=False)  # the frozen layers kept in eval mode

    def apply(self, module: torch.nn.Module) -> None:
        """After a change of the trainable set: set each BatchNorm layer's tracking by whether it is frozen now, and
        (with ``eval_mode``) which layers :meth:`hold` keeps in eval mode; a layer thawed since trains again."""
        released, self._held = self._held, []
        for name, layer in module.named_modules():  # by name: a strategy may swap a layer (SyncBatchNorm) later
            if not isinstance(layer, _BatchNorm):
                continue
            frozen = not any(p.requires_grad for p in layer.parameters(recurse=False))
            own = self._own_tracking.setdefault(name, layer.track_running_stats)
            layer.track_running_stats = own and (self.track_running_stats or not frozen)
            if self.eval_mode and frozen:
                self._held.append(layer)
        for layer in released:
            if all(layer is not held for held in self._held):
                layer.train(module.training)

    def release(self, module: torch.nn.Module) -> None:
        """Give the held layers the mode of ``module`` again (training is over)."""
        for layer in self._held:
            layer.train(module.training)

    def hold(self) -> None:
        """Put the frozen layers in eval mode (again: Lightning's or the module's own mode switches may undo it)."""
        for layer in self._held:
            layer.train(False)
