"""Victim classifiers whose parameter gradients the attacks invert.

Every victim is a pure Flax Linen module wrapped in a :class:`Victim`, so that
``jax.grad`` of the classification loss w.r.t. the parameters can itself be
differentiated w.r.t. the input image (the double backward the attacks need).

Models (inputs are NORMALIZED images of shape (B, H, W, C), outputs logits):

* ``lenet``: DLG's LeNet (Zhu et al., 2019). conv 5x5/12ch stride 2 pad 2,
  sigmoid; conv 5x5/12 stride 2 pad 2, sigmoid; conv 5x5/12 stride 1 pad 2,
  sigmoid; flatten; dense -> classes. All weights and biases ~ U(-0.5, 0.5).
  No BatchNorm.
* ``convnet``: conv3x3-BN-ReLU blocks of widths 32, 64, maxpool, 128, 128,
  maxpool, 256, maxpool, global average pool, dense. Convs have no bias
  (BN follows). ``convnet_tiny`` uses widths 4, 8, 16, 16, 32.
* ``resnet18``: CIFAR-style ResNet-18: 3x3 stride-1 stem conv (64), BN, ReLU,
  no max-pool, 4 stages of 2 BasicBlocks with widths 64-128-256-512 and
  strides 1-2-2-2, 1x1-conv+BN projection shortcut when the shape changes,
  global average pool, dense. ``resnet_tiny`` uses widths 4-8-16-32 with one
  block per stage.

BatchNorm everywhere is ``nn.BatchNorm(use_running_average=not train,
momentum=0.9, epsilon=1e-5)``; eval mode (``train=False``) uses the running
statistics and is pure.

Initialization (``make_victim(..., init=...)``, config ``victim.init``) for ConvNet and ResNet:

* ``"flax"``: Flax's defaults (convs and dense kernels truncated lecun_normal, fan-in; dense bias 0).
* ``"torch"``: what the GI-PIP authors' PyTorch victims get. ResNet: their init loop,
  ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for every conv, i.e. N(0, 2 / (out·kh·kw))
  untruncated. ConvNet (no init loop in PyTorch code): ``nn.Conv2d``'s default,
  U(±1/sqrt(in·kh·kw)). Dense: ``nn.Linear``'s default, weights and bias U(±1/sqrt(fan_in)). BN
  scale 1, bias 0 (the same in both).

LeNet always uses DLG's U(-0.5, 0.5).

Every model takes a ``conv`` field (default ``lax.conv_general_dilated``): ``make_victim(...,
conv=...)`` sets it (:data:`gipip_jax.convs.CONV_CHOICES`). The default ``"auto"`` picks
:func:`gipip_jax.convs.patch_grad_conv` on the CPU (2.2-3x faster attack steps) and XLA's native
convolution elsewhere (:func:`gipip_jax.convs.resolve_conv`); the choice changes how weight
gradients are computed, not the parameters or the function.

User victims (the public protocol)
----------------------------------

Anywhere a built-in name is accepted (``make_victim``, config ``victim.name``, victim checkpoints),
a victim may also be named by

* a name given to :func:`register` (``register("mynet", lambda num_classes: MyNet(num_classes))``;
  the builder returns a Flax Linen module; built-in names cannot be re-registered), or
* ``"path/to/file.py:Class"`` (a file path, absolute or relative to the current directory) or
  ``"package.module:Class"`` (an importable module): the class is imported and built as
  ``Class(num_classes=K)``.

The contract for such a module:

* a Flax Linen module whose ``__call__(x, train=...)`` takes NORMALIZED images ``x`` of shape
  (B, H, W, C) (NHWC) and a ``train`` keyword, and returns logits (B, K); BatchNorm-style state goes
  in the ``batch_stats`` collection (updated only when ``train=True``);
* optional ``conv`` field: a callable with ``lax.conv_general_dilated``'s signature, passed to its
  ``nn.Conv(..., conv_general_dilated=self.conv)`` layers; ``make_victim`` sets it to the chosen
  implementation (the fast CPU patch convolution by default on the CPU). Without a ``conv`` field
  the ``conv`` choice is ignored and the module's own (native) convolutions run;
* optional ``init_scheme`` field: receives ``make_victim(..., init=...)``; otherwise ``init`` is
  ignored (the module's own initializers are used);
* the classification layer: label recovery (``gipip_jax.labels``: iDLG, Yin, LLG, bias_count) reads
  the gradient of the ONE ``nn.Dense`` whose kernel is (F, K) (K = num_classes; its place in the
  params tree does not matter); ``bias_count`` and feature recovery/matching
  (``gipip_jax.features``) also need its bias; feature matching and Soteria
  (``gipip_jax.defenses.soteria_mask``) take the input of the LAST ``nn.Dense`` called in the
  forward pass, which must be that same layer. Without it these raise a ValueError saying so
  (other ``nn.Dense`` layers with K outputs make label recovery ambiguous and raise too); every
  gradient-matching attack itself works with any module.

Names and paths are stored as given in checkpoints (loading re-imports by the same name, so a
relative path must resolve from the loading process's current directory, and a registered name must
be registered there first). A bad name raises one ValueError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from gipip_jax.convs import conv_impl

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class ShapeError(ValueError):
    """An input batch whose per-image shape differs from the victim's."""


def _uniform_init(low: float, high: float) -> Callable[..., jax.Array]:
    """Initializer drawing every entry from U(low, high), as DLG's ``weights_init``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)

    return init


INITS = ("flax", "torch")


def _conv_kernel_init(init: str, style: str):
    """Kernel initializer of a (kh, kw, in, out) conv: Flax's default, or PyTorch's `style`
    ("kaiming_fan_out": kaiming_normal_ fan_out relu; "default": nn.Conv2d's U(±1/sqrt(fan_in)))."""
    if init == "flax":
        return nn.linear.default_kernel_init
    if style == "kaiming_fan_out":
        return jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # "normal" is untruncated in jax
    return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dense(init: str, features: int, fan_in: int) -> nn.Dense:
    """The classification layer: Flax's default, or nn.Linear's (weights and bias U(±1/sqrt(fan_in)))."""
    if init == "flax":
        return nn.Dense(features)
    bound = 1.0 / fan_in ** 0.5
    return nn.Dense(features, kernel_init=jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                    bias_init=_uniform_init(-bound, bound))


def _batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


class LeNet(nn.Module):
    """DLG's LeNet: three sigmoid 5x5 convs (12 channels) and one dense layer."""

    num_classes: int
    conv: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x, train: bool = False):
        init = _uniform_init(-0.5, 0.5)
        for stride in (2, 2, 1):
            x = nn.Conv(12, (5, 5), strides=stride, padding=2, kernel_init=init, bias_init=init,
                        conv_general_dilated=self.conv)(x)
            x = nn.sigmoid(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, kernel_init=init, bias_init=init)(x)


class ConvNet(nn.Module):
    """conv3x3-BN-ReLU stack with max-pools after the 2nd, 4th and 5th conv, GAP, dense."""

    num_classes: int
    widths: Sequence[int] = (32, 64, 128, 128, 256)
    conv: Callable = lax.conv_general_dilated
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        kernel_init = _conv_kernel_init(self.init_scheme, "default")
        for index, width in enumerate(self.widths):
            x = nn.Conv(width, (3, 3), padding=1, use_bias=False, kernel_init=kernel_init,
                        conv_general_dilated=self.conv)(x)
            x = nn.relu(_batch_norm(train)(x))
            if index in (1, 3, 4):
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        return _dense(self.init_scheme, self.num_classes, x.shape[-1])(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv+BN projection shortcut."""

    width: int
    stride: int
    conv: Callable = lax.conv_general_dilated
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = {"use_bias": False, "conv_general_dilated": self.conv,
                "kernel_init": _conv_kernel_init(self.init_scheme, "kaiming_fan_out")}
        y = nn.Conv(self.width, (3, 3), strides=self.stride, padding=1, **conv)(x)
        y = nn.relu(_batch_norm(train)(y))
        y = nn.Conv(self.width, (3, 3), padding=1, **conv)(y)
        y = _batch_norm(train)(y)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1), strides=self.stride, name="shortcut_conv", **conv)(x)
            x = _batch_norm(train, name="shortcut_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, no max-pool, stages of BasicBlocks, GAP, dense."""

    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
    conv: Callable = lax.conv_general_dilated
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, conv_general_dilated=self.conv,
                    kernel_init=_conv_kernel_init(self.init_scheme, "kaiming_fan_out"))(x)
        x = nn.relu(_batch_norm(train)(x))
        for stage, (width, blocks) in enumerate(zip(self.widths, self.blocks_per_stage)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, stride, self.conv, self.init_scheme)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return _dense(self.init_scheme, self.num_classes, x.shape[-1])(x)


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "lenet": lambda classes: LeNet(classes),
    "convnet": lambda classes: ConvNet(classes),
    "convnet_tiny": lambda classes: ConvNet(classes, widths=(4, 8, 16, 16, 32)),
    "resnet18": lambda classes: ResNet(classes),
    "resnet_tiny": lambda classes: ResNet(classes, widths=(4, 8, 16, 32), blocks_per_stage=(1, 1, 1, 1)),
}
VICTIMS: tuple[str, ...] = tuple(_BUILDERS)  # the built-in names
_REGISTERED: dict[str, Callable[[int], nn.Module]] = {}
_IMPORTED: dict[tuple[str, str], type] = {}  # (resolved file or module, class name) -> class, imported once


def register(name: str, builder: Callable[[int], nn.Module]) -> None:
    """Make ``name`` a victim name everywhere a built-in is accepted: ``builder(num_classes)`` returns
    the Flax Linen module (contract in the module docstring). Registering a built-in name, or a name
    with ``:`` (reserved for ``file.py:Class``), raises ValueError; re-registering a user name
    replaces it."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"victim names must be non-empty strings without ':', got {name!r}")
    if name in _BUILDERS:
        raise ValueError(f"{name!r} is a built-in victim and cannot be re-registered")
    if not callable(builder):
        raise ValueError(f"the builder of victim {name!r} must be callable (num_classes -> Flax module)")
    _REGISTERED[name] = builder


def registered() -> tuple[str, ...]:
    """Every victim name: the built-ins (:data:`VICTIMS`) and those given to :func:`register`."""
    return (*VICTIMS, *_REGISTERED)


def _import_class(name: str) -> type:
    """The class named by ``path/to/file.py:Class`` or ``package.module:Class``."""
    where, _, attribute = name.rpartition(":")
    if not where or not attribute:
        raise ValueError(f"victim {name!r}: expected 'path/to/file.py:Class' or 'package.module:Class'")
    if where.endswith(".py"):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ValueError(f"victim {name!r}: no file {path}")
        key = (path, attribute)
        if key not in _IMPORTED:
            module_name = "gipip_jax_user_victim_" + hashlib.sha1(path.encode()).hexdigest()[:12]
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module  # dataclasses (Flax modules) look their module up here
                try:
                    spec.loader.exec_module(module)
                except Exception as error:
                    del sys.modules[module_name]
                    raise ValueError(f"victim {name!r}: importing {path} failed: {error!r}") from error
    else:
        key = (where, attribute)
        if key not in _IMPORTED:
            try:
                module = importlib.import_module(where)
            except ImportError as error:
                raise ValueError(f"victim {name!r}: cannot import module {where!r}: {error}") from error
    if key not in _IMPORTED:
        cls = getattr(module, attribute, None)
        if cls is None:
            raise ValueError(f"victim {name!r}: {where} has no attribute {attribute!r}")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"victim {name!r}: {attribute} is not a Flax Linen module class (nn.Module)")
        _IMPORTED[key] = cls
    return _IMPORTED[key]


def _build_module(name: str, num_classes: int) -> nn.Module:
    """The unconfigured module of victim ``name`` (built-in, registered, or ``where:Class``)."""
    if name in _BUILDERS:
        return _BUILDERS[name](num_classes)
    if name in _REGISTERED:
        module = _REGISTERED[name](num_classes)
        if not isinstance(module, nn.Module):
            raise ValueError(f"the builder registered as victim {name!r} returned {type(module).__name__}, "
                             f"not a Flax Linen module")
        return module
    if ":" not in name:
        raise ValueError(f"unknown victim {name!r}; choose one of {', '.join(registered())}, a name given to "
                         f"gipip_jax.victims.register, or 'path/to/file.py:Class' / 'package.module:Class'")
    cls = _import_class(name)
    try:
        return cls(num_classes=num_classes)
    except TypeError as error:
        raise ValueError(f"victim {name!r}: {cls.__name__}(num_classes={num_classes}) failed: {error}") from error


def _fields(module: nn.Module) -> set[str]:
    return {field.name for field in dataclasses.fields(module)}


@dataclasses.dataclass(frozen=True)
class Victim:
    """A classifier built for one image shape (H, W, C) and number of classes."""

    name: str
    module: nn.Module
    image_shape: tuple[int, int, int]
    num_classes: int

    def init(self, key: jax.Array) -> dict[str, Any]:
        """Fresh variables: ``{'params': ...}`` plus ``'batch_stats'`` for BN models."""
        dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
        return self.module.init(key, dummy, train=False)

    def apply(self, variables: dict[str, Any], x: jax.Array, *, train: bool = False, rngs=None):
        """Logits (B, num_classes) for normalized images ``x`` of shape (B, *image_shape).

        ``train=False`` returns the logits only (BN uses running statistics).
        ``train=True`` returns ``(logits, new_batch_stats)``: BN normalizes with
        the batch statistics and the running averages are updated; the second
        item is ``{}`` for models without BN.
        """
        if tuple(x.shape[1:]) != self.image_shape:
            raise ShapeError(
                f"victim {self.name!r} was built for images of shape (H, W, C) = "
                f"{self.image_shape}, got a batch of shape {tuple(x.shape)} "
                f"(per-image {tuple(x.shape[1:])})"
            )
        if not train:
            return self.module.apply(variables, x, train=False, rngs=rngs)
        if "batch_stats" not in variables:
            return self.module.apply(variables, x, train=True, rngs=rngs), {}
        logits, updates = self.module.apply(
            variables, x, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]


def make_victim(name: str, num_classes: int, image_shape: Sequence[int], *, conv: str = "auto",
                init: str = "flax") -> Victim:
    """Build victim ``name`` for ``image_shape`` = (H, W, C): a built-in (:data:`VICTIMS`), a name given
    to :func:`register`, or ``"path/to/file.py:Class"`` / ``"package.module:Class"`` (module docstring).

    ``conv`` names the convolution implementation (:data:`gipip_jax.convs.CONV_CHOICES`; ``"auto"``:
    the patch convolution on the CPU, native elsewhere); the variables and the function are the same
    for every choice (ignored by modules without a ``conv`` field). ``init`` (:data:`INITS`) is how
    ``Victim.init`` draws fresh variables: Flax's defaults or PyTorch's (see the module docstring;
    LeNet and modules without an ``init_scheme`` field ignore it).
    """
    if not isinstance(name, str):
        raise ValueError(f"a victim name must be a string, got {name!r}")
    if init not in INITS:
        raise ValueError(f"unknown victim init {init!r}; choose one of {', '.join(INITS)}")
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    conv_fn = conv_impl(conv)
    module = _build_module(name, int(num_classes))
    fields = _fields(module)
    if "conv" in fields:
        module = module.clone(conv=conv_fn)
    if "init_scheme" in fields:
        module = module.clone(init_scheme=init)
    return Victim(name, module, image_shape, int(num_classes))


def count_params(variables: dict[str, Any]) -> int:
    """Number of trainable parameters (entries of ``variables['params']``)."""
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
