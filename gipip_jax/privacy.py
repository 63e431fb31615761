"""Privacy accounting for DP-SGD: the (eps, delta) that a noise multiplier, sampling rate and
number of steps imply.

dp-accounting's Renyi-DP accountant (`dp_accounting.rdp.RdpAccountant`) composes `steps` times the
Poisson-subsampled Gaussian mechanism (`PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`; Mironov,
Talwar & Zhang 2019) and converts the RDP curve to eps at the target delta (Canonne, Kamath &
Steinke 2020). Orders: the integers 2..256 by default. tests/test_privacy.py checks it against the
closed-form RDP sum written out by hand.
"""

from __future__ import annotations

import dp_accounting

DEFAULT_ORDERS = tuple(range(2, 257))


def dp_sgd_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
                   orders=DEFAULT_ORDERS) -> float:
    """eps >= 0 of DP-SGD run for `steps` steps with Poisson sampling rate q = batch / dataset size
    in (0, 1], per-example clipping and Gaussian noise of std noise_multiplier (> 0) * clip norm,
    for delta in (0, 1); 0 steps gives 0. orders: RDP orders > 1."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps == 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(orders))
    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(dp_accounting.SelfComposedDpEvent(step, int(steps)))
    return float(accountant.get_epsilon(delta))
