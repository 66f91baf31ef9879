"""One torch thread for every test: the models are tiny, and on a busy 2-core
machine OpenMP threads that spin-wait for each other are far slower than one."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
