import os

import pytest
import torch

# Two cores shared by everything: keep torch from oversubscribing them in tests.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (bit-exact comparisons, shared CI cores); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_batchnorm_and_scales(model: torch.nn.Module, seed: int = 0) -> None:
    """Make folding non-trivial: random BN statistics/affine and O(1) layer scales."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)


@pytest.fixture
def randomize():
    return randomize_batchnorm_and_scales
