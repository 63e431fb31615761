"""Metrics: PSNR/SSIM/MSE against formulas, order matching, LPIPS."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from gipip_jax import metrics

RNG = np.random.default_rng(0)


def images(n=4, size=16):
    return RNG.uniform(size=(n, size, size, 3)).astype(np.float32)


def noisy(x, std):
    return np.clip(x + RNG.normal(scale=std, size=x.shape), 0, 1).astype(np.float32)


def numpy_ssim(a, b, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM of two (H, W, C) images in [0,1]: Gaussian window, valid filtering, mean over pixels and channels."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    window = np.outer(g, g) / g.sum() ** 2
    filt = lambda z: np.stack([scipy.signal.convolve2d(z[..., c], window, mode="valid") for c in range(z.shape[-1])], -1)  # noqa: E731
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def inversefed_ssim(a, b, size=11, sigma=1.5):
    """inversefed's `ssim` of two (H, W, C) images in [0,1], in float64: normalized 2-D Gaussian
    window, each channel correlated with zero padding (full-size map), mean over the whole map."""
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    window = np.outer(g / g.sum(), g / g.sum())
    a, b = a.astype(np.float64), b.astype(np.float64)
    filt = lambda z: np.stack([scipy.ndimage.correlate(z[..., c], window, mode="constant", cval=0.0)  # noqa: E731
                               for c in range(z.shape[-1])], -1)
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def smooth_images(n=2, size=32):
    """Low-frequency images: a few random sinusoids per channel, in [0, 1]."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.zeros((n, size, size, 3))
    for i in range(n):
        for c in range(3):
            f = RNG.uniform(0.5, 2.5, size=4)
            out[i, :, :, c] = 0.5 + 0.25 * np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + f[2]) * np.cos(f[3] * xx)
    return out.astype(np.float32)


def test_psnr_and_mse_match_formulas():
    a = images()
    b = noisy(a, 0.1)
    m = ((a - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.mse(a, b), m, rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(a, b), 10 * np.log10(1 / m), rtol=1e-5)


def test_ssim_matches_numpy_transcription():
    a = images(2, 20)
    b = noisy(a, 0.2)
    expected = [numpy_ssim(a[i], b[i]) for i in range(2)]
    np.testing.assert_allclose(metrics.ssim(a, b), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_padded_matches_inversefed_transcription(kind):
    a = images(2, 32) if kind == "random" else smooth_images(2, 32)
    b = noisy(a, 0.1) if kind == "random" else noisy(a, 0.03)
    expected = [inversefed_ssim(a[i], b[i]) for i in range(2)]
    np.testing.assert_allclose(metrics.ssim_padded(a, b), expected, atol=1e-5)
    np.testing.assert_allclose(metrics.ssim_padded(a, a), 1.0, atol=1e-5)
    assert metrics.ssim_padded_map(a, b).shape == a.shape


@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_padded_map_cropped_to_valid_region_is_dm_pix_ssim(kind):
    a = images(3, 24) if kind == "random" else smooth_images(3, 24)
    b = noisy(a, 0.2)
    valid = np.asarray(metrics.ssim_padded_map(a, b))[:, 5:-5, 5:-5, :].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(valid, metrics.ssim(a, b), atol=1e-4)
    # the zero-padded border only adds windows; on these images it changes the mean
    assert not np.allclose(metrics.ssim_padded(a, b), metrics.ssim(a, b), atol=1e-3)


def test_match_order_undoes_a_shuffle():
    truth = images(5)
    perm = np.array([3, 0, 4, 1, 2])
    rec = noisy(truth, 0.05)[perm]
    order = metrics.match_order(rec, truth)
    assert sorted(order.tolist()) == list(range(5))
    assert np.all(perm[order] == np.arange(5))


def test_evaluate_reports_matched_metrics():
    truth = images(3)
    rec = noisy(truth, 0.05)[[2, 0, 1]]
    out = metrics.evaluate(rec, truth, lpips_net=None)
    assert out["order"] == [1, 2, 0]
    aligned = rec[out["order"]]
    np.testing.assert_allclose(out["psnr"], metrics.psnr(aligned, truth), rtol=1e-6)
    np.testing.assert_allclose(out["ssim"], out["ssim_best_match"], rtol=1e-6)  # clear matches agree
    np.testing.assert_allclose(out["ssim_padded"], metrics.ssim_padded(aligned, truth), rtol=1e-6)
    assert "lpips" not in out
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate(rec[:2], truth)


@pytest.mark.parametrize("net", metrics.LPIPS_NETS)
def test_lpips_is_zero_on_identical_and_grows_with_noise(net):
    a = images(2, 32)
    same = metrics.lpips(a, a, net)
    small, large = metrics.lpips(a, noisy(a, 0.05), net), metrics.lpips(a, noisy(a, 0.3), net)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    assert np.all(small > 0) and np.all(large > small)


def test_unknown_lpips_net():
    with pytest.raises(ValueError, match="LPIPS"):
        metrics.lpips(images(1, 32), images(1, 32), "resnet")
