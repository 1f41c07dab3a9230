"""Strategy-independent optimizer and LR-scheduler surgery: parameter groups added and truncated, schedulers
re-pointed across groups, optimizers and schedulers re-initialised from a phase's config.

Everything here works on a bare ``torch.optim.Optimizer`` and its LR schedulers, with no process group and no
engine; the strategy adapters (:mod:`fts_dist.adapters`) call it at each transition.
"""
