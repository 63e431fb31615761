"""Privacy accounting for DP-SGD: the (eps, delta) that a noise multiplier, sampling rate and
number of steps imply, by Renyi differential privacy (RDP).

Formulas (no accountant package is a dependency: dp-accounting 0.6.0 installs, but pins
attrs < 24, which would downgrade this environment's attrs; our numbers match it, see the tests):

- One step of the Poisson-subsampled Gaussian mechanism (sampling rate q, noise multiplier sigma =
  noise std / clipping norm) at integer order alpha >= 2 (Mironov, Talwar & Zhang 2019, "Renyi
  Differential Privacy of the Sampled Gaussian Mechanism", Sec. 3.3):
      A_alpha = sum_{k=0..alpha} C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2)),
      RDP(alpha) = log(A_alpha) / (alpha - 1)            (q = 1 gives alpha / (2 sigma^2)).
- T steps compose additively: T * RDP(alpha).
- RDP -> (eps, delta) (Canonne, Kamath & Steinke 2020 / Balle et al. 2020, as dp-accounting's
  RdpAccountant): eps = min_alpha  RDP_T(alpha) + log((alpha - 1) / alpha)
                                   - (log delta + log alpha) / (alpha - 1),
  and eps = 0 at orders where delta^2 > 1 - exp(-RDP_T(alpha)).
Orders: the integers 2..256 by default (fractional orders would give a slightly smaller eps).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

DEFAULT_ORDERS = tuple(range(2, 257))


def _check(noise_multiplier: float, sampling_rate: float, steps: int, orders) -> None:
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if not orders or any(int(a) != a or a < 2 for a in orders):
        raise ValueError(f"orders must be integers >= 2, got {orders}")


def _log_a(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha of the sampled Gaussian mechanism, by a log-sum-exp over the binomial terms."""
    k = np.arange(alpha + 1)
    log_binomial = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    if q == 1.0:
        return (alpha * alpha - alpha) / (2 * sigma**2)
    terms = log_binomial + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
    return float(logsumexp(terms))


def rdp_sampled_gaussian(noise_multiplier: float, sampling_rate: float, steps: int,
                         orders=DEFAULT_ORDERS) -> np.ndarray:
    """RDP (len(orders),) of `steps` compositions of the Poisson-subsampled Gaussian mechanism."""
    _check(noise_multiplier, sampling_rate, steps, orders)
    return np.array([steps * _log_a(sampling_rate, noise_multiplier, int(a)) / (a - 1) for a in orders])


def epsilon_from_rdp(rdp: np.ndarray, orders, delta: float) -> tuple[float, int]:
    """(eps, best order) for target delta in (0, 1) from RDP values at integer orders."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    orders = np.asarray(orders, float)
    eps = rdp + np.log1p(-1 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    eps = np.where(delta**2 + np.expm1(-np.asarray(rdp)) > 0, 0.0, eps)  # RDP so small that eps = 0
    best = int(np.argmin(eps))
    return max(float(eps[best]), 0.0), int(orders[best])


def dp_sgd_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
                   orders=DEFAULT_ORDERS) -> float:
    """eps of DP-SGD run for `steps` steps with Poisson sampling rate q = batch / dataset size,
    per-example clipping and Gaussian noise of std noise_multiplier * clip norm; 0 steps gives 0."""
    if steps == 0:
        _check(noise_multiplier, sampling_rate, steps, orders)
        return 0.0
    return epsilon_from_rdp(rdp_sampled_gaussian(noise_multiplier, sampling_rate, steps, orders), orders, delta)[0]
