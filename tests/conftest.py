import os

# Measured here: more than one intra-op thread per process slows multi-process CPU runs by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skip them, saying so, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `python -m pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def adapter_registry():
    """The adapter registry, put back as it was after the test (tests register strategies of their own)."""
    from fts_dist.adapters import registry

    saved = dict(registry._ADAPTERS)
    yield registry
    registry._ADAPTERS.clear()
    registry._ADAPTERS.update(saved)
