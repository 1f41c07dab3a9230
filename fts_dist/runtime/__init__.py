"""How fts_dist processes are started, fitted to the machine, restarted and watched.

One package for everything between a cluster job and a running Trainer; nothing here knows about schedules or
strategy internals:

- :mod:`~fts_dist.runtime.launcher`: a cluster's environment (SLURM, Kubernetes PyTorchJob, torchrun variables)
  mapped to a torchrun command; ``python -m fts_dist.runtime.launcher`` is the Docker entrypoint and the
  ``launch/`` scripts' engine.
- :mod:`~fts_dist.runtime.elastic`: a fresh rendezvous namespace for every torchrun restart attempt.
- :mod:`~fts_dist.runtime.fallback`: a multi-device config fitted to the devices this machine has (pure logic;
  which strategy needs a GPU comes from the adapter registry).
- :mod:`~fts_dist.runtime.clean_exit`: the default gloo process group is destroyed before interpreter teardown,
  which otherwise aborts some exits after a successful run.
- :mod:`~fts_dist.runtime.liveness`: a rank whose launcher died ends instead of waiting in a collective, and a
  failing rank can say which peers are gone.
"""
