"""What the model tests share: the micro msGFM config and a one-thread torch fixture (the saved micro model
is `saved` in conftest.py)."""

import pytest
import torch

# A micro msGFM: the real code paths (4 stages, shifted windows, MoE in stages 2-3) at test speed.
MICRO = dict(chip_px=32, embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 1, 2, 2), window_size=4, experts=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the CI machine has 2 shared cores and small ops only lose from threading."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
