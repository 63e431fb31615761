"""RDP accounting of DP-SGD against closed forms and a reference accountant."""

import math

import numpy as np
import pytest

from gipip_jax import privacy

# dp-accounting 0.6.0 (Google), RdpAccountant(orders=range(2, 257)) composing
# PoissonSampledDpEvent(q, GaussianDpEvent(sigma)) `steps` times, get_epsilon(delta);
# computed once with the package installed to a temporary directory (it is not a dependency).
REFERENCE = [  # (sigma, q, steps, delta, eps)
    (1.1, 0.01, 10_000, 1e-5, 5.6543080001495145),
    (1.1, 256 / 60_000, 60 * 60_000 // 256, 1e-5, 2.5969811785948815),
    (4.0, 1.0, 1, 1e-5, 1.0125506277526433),
    (2.0, 0.1, 100, 1e-6, 2.9155929057381087),
    (1.0, 128 / 50_000, 390, 1e-5, 0.84326584509717),
]


@pytest.mark.parametrize("sigma, q, steps, delta, eps", REFERENCE)
def test_epsilon_matches_the_reference_accountant(sigma, q, steps, delta, eps):
    assert privacy.dp_sgd_epsilon(sigma, q, steps, delta) == pytest.approx(eps, rel=1e-9)


def test_full_batch_rdp_is_the_gaussian_mechanism():
    orders = (2, 3, 10, 64)
    np.testing.assert_allclose(privacy.rdp_sampled_gaussian(1.5, 1.0, 7, orders),
                               [7 * a / (2 * 1.5**2) for a in orders], rtol=1e-12)


def test_subsampling_order_two_closed_form():
    # alpha = 2: A = (1-q)^2 + 2 q (1-q) + q^2 e^{1/sigma^2} = 1 + q^2 (e^{1/sigma^2} - 1)
    q, sigma = 0.05, 0.8
    expected = math.log1p(q * q * math.expm1(1 / sigma**2))
    assert privacy.rdp_sampled_gaussian(sigma, q, 1, (2,))[0] == pytest.approx(expected, rel=1e-12)


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    eps = lambda sigma, steps: privacy.dp_sgd_epsilon(sigma, 0.01, steps, 1e-5)
    assert eps(1.0, 100) < eps(1.0, 1000) < eps(1.0, 10_000)
    assert eps(4.0, 1000) < eps(2.0, 1000) < eps(1.0, 1000)
    assert privacy.dp_sgd_epsilon(1.0, 0.01, 0, 1e-5) == 0.0


@pytest.mark.parametrize("args, message", [
    ((0.0, 0.1, 10, 1e-5), "noise_multiplier"),
    ((1.0, 0.0, 10, 1e-5), "sampling_rate"),
    ((1.0, 1.5, 10, 1e-5), "sampling_rate"),
    ((1.0, 0.1, 2.5, 1e-5), "steps"),
    ((1.0, 0.1, 10, 0.0), "delta"),
])
def test_bad_accounting_input_raises(args, message):
    with pytest.raises(ValueError, match=message):
        privacy.dp_sgd_epsilon(*args)
