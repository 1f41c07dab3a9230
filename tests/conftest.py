import os

# Measured here: more than one intra-op thread per process slows multi-process CPU runs by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
