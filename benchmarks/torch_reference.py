"""PyTorch reference of the GI-PIP / Inverting Gradients attack step, for timing against gipip_jax.

Written here from the published formulas (DESIGN.md), not from gipip_jax's code, and run the way
the PyTorch suites run it: one attack after another, the victim's parameter gradient taken with
`torch.autograd.grad(..., create_graph=True)` and differentiated again with respect to the pixels.

    objective(x) = 1 - cos(g(x), g*)  +  λ_TV · TV(x)  +  λ_AS · | MSE(x01, AE(x01)) - c |

with ONE cosine over all layers' gradients concatenated, TV = mean |dx| + mean |dy| on normalized
images, x01 = clamp(x · std + mean, 0, 1); Adam lr 0.1 on the pixels, lr x0.1 at
iterations // 2.667, // 1.6, // 1.142 (MultiStepLR), the box clamp after every step.

Architectures mirror gipip_jax/victims.py (ConvNet, CIFAR ResNet-18 and their tiny variants, BN in
eval mode with running statistics, eps 1e-5) and gipip_jax/autoencoder.py (k4 s2 p1 convs
3→12→24→48, mirrored transposed convs, sigmoid). Weights are ported from the Flax variables through
NumPy (HWIO → OIHW; Dense (in, out) → Linear (out, in)), so both sides compute on equal weights.
Images are NCHW here, NHWC in JAX.

Needs `torch==2.13.0` (the `bench` extra); nothing in gipip_jax imports this file.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPSILON = 1e-5
MILESTONE_DIVISORS = (2.667, 1.6, 1.142)
VICTIM_SHAPES = {
    "convnet": dict(kind="convnet", widths=(32, 64, 128, 128, 256)),
    "convnet_tiny": dict(kind="convnet", widths=(4, 8, 16, 16, 32)),
    "resnet18": dict(kind="resnet", widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
    "resnet_tiny": dict(kind="resnet", widths=(4, 8, 16, 32), blocks=(1, 1, 1, 1)),
}


# -- victims -----------------------------------------------------------------------------------

def _bn(width: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(width, eps=BN_EPSILON)


class ConvNet(nn.Module):
    """conv3x3(no bias)-BN-ReLU of `widths`, max-pool 2x2 after the 2nd, 4th and 5th, GAP, linear."""

    def __init__(self, num_classes: int, widths: Sequence[int], channels: int = 3):
        super().__init__()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for width in widths:
            self.convs.append(nn.Conv2d(channels, width, 3, padding=1, bias=False))
            self.bns.append(_bn(width))
            channels = width
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if index in (1, 3, 4):
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = _bn(width)
        self.shortcut = None
        if stride != 1 or channels != width:
            self.shortcut = nn.Sequential(nn.Conv2d(channels, width, 1, stride=stride, bias=False), _bn(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, BasicBlock stages, GAP, linear."""

    def __init__(self, num_classes: int, widths: Sequence[int], blocks: Sequence[int], channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        self.bn = _bn(widths[0])
        layers, channels = [], widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for block in range(count):
                layers.append(BasicBlock(channels, width, 2 if stage > 0 and block == 0 else 1))
                channels = width
        self.blocks = nn.ModuleList(layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


class Autoencoder(nn.Module):
    """GI-PIP's AE: Conv(k4, s2, p1) 3→12→24→48 + ReLU, ConvTranspose 48→24→12→3, sigmoid."""

    def __init__(self, channels: int = 3, widths: Sequence[int] = (12, 24, 48)):
        super().__init__()
        enc, c = [], channels
        for w in widths:
            enc.append(nn.Conv2d(c, w, 4, stride=2, padding=1))
            c = w
        dec = []
        for w in (*widths[-2::-1], channels):
            dec.append(nn.ConvTranspose2d(c, w, 4, stride=2, padding=1))
            c = w
        self.enc, self.dec = nn.ModuleList(enc), nn.ModuleList(dec)

    def forward(self, x):
        for conv in self.enc:
            x = F.relu(conv(x))
        for index, conv in enumerate(self.dec):
            x = conv(x)
            if index < len(self.dec) - 1:
                x = F.relu(x)
        return torch.sigmoid(x)


# -- porting Flax weights through NumPy --------------------------------------------------------

def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _set_conv(conv: nn.Conv2d, flax_conv: dict) -> None:
    conv.weight.data = _t(np.transpose(np.asarray(flax_conv["kernel"]), (3, 2, 0, 1)))  # HWIO -> OIHW
    if "bias" in flax_conv:
        conv.bias.data = _t(flax_conv["bias"])


def _set_bn(bn: nn.BatchNorm2d, params: dict, stats: dict) -> None:
    bn.weight.data, bn.bias.data = _t(params["scale"]), _t(params["bias"])
    bn.running_mean.data, bn.running_var.data = _t(stats["mean"]), _t(stats["var"])


def _set_dense(fc: nn.Linear, flax_dense: dict) -> None:
    fc.weight.data = _t(np.asarray(flax_dense["kernel"]).T)
    fc.bias.data = _t(flax_dense["bias"])


def port_victim(name: str, variables: dict, num_classes: int) -> nn.Module:
    """The torch victim `name` (a key of VICTIM_SHAPES) holding the Flax `variables`, in eval mode."""
    spec = VICTIM_SHAPES[name]
    p, s = variables["params"], variables["batch_stats"]
    if spec["kind"] == "convnet":
        model = ConvNet(num_classes, spec["widths"])
        for i, (conv, bn) in enumerate(zip(model.convs, model.bns)):
            _set_conv(conv, p[f"Conv_{i}"])
            _set_bn(bn, p[f"BatchNorm_{i}"], s[f"BatchNorm_{i}"])
    else:
        model = ResNet(num_classes, spec["widths"], spec["blocks"])
        _set_conv(model.conv, p["Conv_0"])
        _set_bn(model.bn, p["BatchNorm_0"], s["BatchNorm_0"])
        for i, block in enumerate(model.blocks):
            bp, bs = p[f"BasicBlock_{i}"], s[f"BasicBlock_{i}"]
            _set_conv(block.conv1, bp["Conv_0"])
            _set_bn(block.bn1, bp["BatchNorm_0"], bs["BatchNorm_0"])
            _set_conv(block.conv2, bp["Conv_1"])
            _set_bn(block.bn2, bp["BatchNorm_1"], bs["BatchNorm_1"])
            if block.shortcut is not None:
                _set_conv(block.shortcut[0], bp["shortcut_conv"])
                _set_bn(block.shortcut[1], bp["shortcut_bn"], bs["shortcut_bn"])
    _set_dense(model.fc, p["Dense_0"])
    return model.eval()


def port_autoencoder(params: dict) -> nn.Module:
    """The torch AE holding the Flax AE `params`.

    Flax's ConvTranspose(transpose_kernel=True) stores the kernel of the stride-2 conv it is the
    adjoint of, HWIO with I = its own output channels; PyTorch's ConvTranspose2d weight
    (in, out, kH, kW) is that same forward conv's OIHW weight, so the port is (3, 2, 0, 1), no flip.
    """
    model = Autoencoder()
    for i, conv in enumerate(model.enc):
        _set_conv(conv, params[f"encoder_convs_{i}"])
    for i, conv in enumerate(model.dec):
        flax_conv = params[f"decoder_convs_{i}"]
        conv.weight.data = _t(np.transpose(np.asarray(flax_conv["kernel"]), (3, 2, 0, 1)))
        conv.bias.data = _t(flax_conv["bias"])
    return model.eval()


def nhwc_to_nchw(x) -> torch.Tensor:
    return _t(np.transpose(np.asarray(x), (0, 3, 1, 2)))


# -- the attack ----------------------------------------------------------------------------------

def total_variation(x: torch.Tensor) -> torch.Tensor:
    """mean |x[w+1]-x[w]| + mean |x[h+1]-x[h]| of NCHW images."""
    return (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean() + (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()


class ReferenceAttack:
    """One GI-PIP / IG attack on one target, PyTorch style.

    model: the victim (eval mode); target_grads: list of tensors in model.parameters() order;
    labels: int64 (B,); mean, std: per-channel normalization; ae: the AE prior or None.
    """

    def __init__(self, model: nn.Module, target_grads, labels, *, mean, std, tv: float = 0.0, anomaly: float = 0.0,
                 offset: float = 0.0, ae: nn.Module | None = None, lr: float = 0.1, iterations: int = 10_000):
        self.model, self.params = model, [p for p in model.parameters()]
        self.target = [t.detach() for t in target_grads]
        self.target_norm = torch.sqrt(sum((t * t).sum() for t in self.target))
        self.labels = labels
        device = self.target[0].device
        self.mean = torch.as_tensor(np.asarray(mean, np.float32)).view(1, -1, 1, 1).to(device)
        self.std = torch.as_tensor(np.asarray(std, np.float32)).view(1, -1, 1, 1).to(device)
        self.lo, self.hi = (0 - self.mean) / self.std, (1 - self.mean) / self.std
        self.tv, self.anomaly, self.offset, self.ae = tv, anomaly, offset, ae
        self.lr, self.iterations = lr, iterations

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.model(x), self.labels)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, self.target))
        g_norm = torch.sqrt(sum((g * g).sum() for g in grads))
        value = 1 - dot / torch.clamp(g_norm * self.target_norm, min=1e-30)
        if self.tv > 0:
            value = value + self.tv * total_variation(x)
        if self.anomaly > 0:
            x01 = torch.clamp(x * self.std + self.mean, 0, 1)
            value = value + self.anomaly * torch.abs(F.mse_loss(self.ae(x01), x01) - self.offset)
        return value

    def value_and_grad(self, x: torch.Tensor):
        x = x.detach().clone().to(self.mean.device).requires_grad_(True)
        value = self.objective(x)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    def start(self, x0: torch.Tensor) -> None:
        """(Re)starts the attack from x0 (NCHW, normalized): a fresh Adam and schedule."""
        self.x = x0.detach().clone().to(self.mean.device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.x], lr=self.lr)
        milestones = [int(self.iterations // d) for d in MILESTONE_DIVISORS]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=0.1)

    def step(self) -> torch.Tensor:
        """One Adam step on the pixels, then the box clamp. Returns the objective before the step."""
        self.optimizer.zero_grad()
        value = self.objective(self.x)
        (self.x.grad,) = torch.autograd.grad(value, self.x)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.x.data = torch.max(torch.min(self.x, self.hi), self.lo)
        return value.detach()


def target_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> list:
    """The client's FedSGD update: gradient of the mean CE loss, in model.parameters() order."""
    return [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(x), labels), list(model.parameters()))]
