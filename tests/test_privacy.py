"""DP-SGD accounting (dp-accounting's RDP accountant) against recorded values and the RDP formulas
written out by hand."""

import math

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp

from gipip_jax import privacy

# dp-accounting 0.6.0 (Google), RdpAccountant(orders=range(2, 257)) composing
# PoissonSampledDpEvent(q, GaussianDpEvent(sigma)) `steps` times, get_epsilon(delta).
REFERENCE = [  # (sigma, q, steps, delta, eps)
    (1.1, 0.01, 10_000, 1e-5, 5.6543080001495145),
    (1.1, 256 / 60_000, 60 * 60_000 // 256, 1e-5, 2.5969811785948815),
    (4.0, 1.0, 1, 1e-5, 1.0125506277526433),
    (2.0, 0.1, 100, 1e-6, 2.9155929057381087),
    (1.0, 128 / 50_000, 390, 1e-5, 0.84326584509717),
]


def rdp_by_hand(sigma, q, steps, orders):
    """RDP (len(orders),) of `steps` Poisson-subsampled Gaussian steps at integer orders alpha >= 2
    (Mironov, Talwar & Zhang 2019, Sec. 3.3): steps * log(A_alpha) / (alpha - 1) with
    A_alpha = sum_k C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2)); q = 1: alpha / (2 sigma^2)."""
    rdp = []
    for alpha in orders:
        if q == 1.0:
            log_a = (alpha * alpha - alpha) / (2 * sigma**2)
        else:
            k = np.arange(alpha + 1)
            log_binomial = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
            log_a = logsumexp(log_binomial + (alpha - k) * math.log1p(-q) + k * math.log(q)
                              + (k * k - k) / (2 * sigma**2))
        rdp.append(steps * log_a / (alpha - 1))
    return np.array(rdp)


def epsilon_by_hand(rdp, orders, delta):
    """min over orders of RDP + log((a - 1) / a) - (log delta + log a) / (a - 1) (Canonne, Kamath &
    Steinke 2020), 0 where delta^2 > 1 - exp(-RDP)."""
    orders = np.asarray(orders, float)
    eps = rdp + np.log1p(-1 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    eps = np.where(delta**2 + np.expm1(-rdp) > 0, 0.0, eps)
    return max(float(eps.min()), 0.0)


@pytest.mark.parametrize("sigma, q, steps, delta, eps", REFERENCE)
def test_epsilon_matches_the_recorded_accountant_values(sigma, q, steps, delta, eps):
    assert privacy.dp_sgd_epsilon(sigma, q, steps, delta) == pytest.approx(eps, rel=1e-9)


@pytest.mark.parametrize("sigma, q, steps, delta", [(s, q, t, d) for s, q, t, d, _ in REFERENCE]
                         + [(0.7, 0.02, 500, 1e-5), (3.0, 0.5, 10, 1e-3)])
def test_epsilon_agrees_with_the_rdp_formulas_by_hand(sigma, q, steps, delta):
    orders = privacy.DEFAULT_ORDERS
    expected = epsilon_by_hand(rdp_by_hand(sigma, q, steps, orders), orders, delta)
    assert privacy.dp_sgd_epsilon(sigma, q, steps, delta) == pytest.approx(expected, rel=1e-9)


def test_the_formulas_by_hand_match_closed_forms():
    orders = (2, 3, 10, 64)
    np.testing.assert_allclose(rdp_by_hand(1.5, 1.0, 7, orders), [7 * a / (2 * 1.5**2) for a in orders], rtol=1e-12)
    # alpha = 2: A = (1-q)^2 + 2 q (1-q) + q^2 e^{1/sigma^2} = 1 + q^2 (e^{1/sigma^2} - 1)
    q, sigma = 0.05, 0.8
    assert rdp_by_hand(sigma, q, 1, (2,))[0] == pytest.approx(math.log1p(q * q * math.expm1(1 / sigma**2)), rel=1e-12)


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
    ((1.0, 0.1, 0, 0.0), "delta"),
])
def test_bad_accounting_input_raises(args, message):
    with pytest.raises(ValueError, match=message):
        privacy.dp_sgd_epsilon(*args)
