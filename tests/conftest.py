"""Settings shared by the whole test suite."""

import torch

# The tests run tiny models: one intra-op thread is faster there, and with two threads on the
# 2-core machines every op stalls (suite 7 s -> 50 s) as soon as another process takes a core.
torch.set_num_threads(1)
