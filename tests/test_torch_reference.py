"""The PyTorch reference (benchmarks/torch_reference.py) computes what gipip_jax computes.

Same weights (ported through NumPy), same inputs: the GI-PIP objective, its gradient w.r.t. the
pixels and a few optimizer steps (Adam, step schedule, box) agree, so the JAX-vs-PyTorch timings
of benchmarks/step_benchmark.py compare equal work. Skipped without torch (the `bench` extra).
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
reference = pytest.importorskip("torch_reference")

from gipip_jax import attack  # noqa: E402
from gipip_jax.autoencoder import init_autoencoder_params, make_autoencoder  # noqa: E402
from gipip_jax.client import victim_gradient  # noqa: E402
from gipip_jax.data import DatasetInfo  # noqa: E402
from gipip_jax.objectives import make_objective  # noqa: E402
from gipip_jax.victims import make_victim  # noqa: E402

INFO = DatasetInfo("cifar10", (16, 16, 3), 10, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261),
                   tuple(str(i) for i in range(10)))
ITERATIONS = 8  # milestones at steps 2, 5, 7: the run below crosses all three
GIPIP_TERMS = {"tv": {"weight": 1e-2}, "anomaly": {"weight": 1e-1, "offset": 0.001}}


def _setup(name, terms=GIPIP_TERMS):
    """terms: the objective's terms (tv, anomaly); the reference gets the same numbers (0 for a term not in it)."""
    victim = make_victim(name, INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 6)
    # Non-trivial BN statistics and affine parameters, so eval-mode BN is really checked.
    stats = jax.tree.map(lambda a, k=keys[0]: a + 0.2 * jnp.abs(jax.random.normal(k, a.shape)), variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    ae = make_autoencoder()
    ae_params = init_autoencoder_params(ae, keys[1], INFO.image_shape)
    objective = make_objective(victim, variables, INFO, terms=terms,
                               reconstruct=lambda x: ae.apply({"params": ae_params}, x))
    x01 = jax.random.uniform(keys[2], (2, *INFO.image_shape))
    labels = jnp.array([3, 7])
    target = jax.jit(lambda x: victim_gradient(victim, variables, INFO.normalize(x), labels))(x01)
    net = reference.port_victim(name, variables, INFO.num_classes)
    t_labels = torch.tensor(np.asarray(labels), dtype=torch.int64)
    t_target = reference.target_gradients(net, reference.nhwc_to_nchw(INFO.normalize(x01)), t_labels)
    tv, anomaly = (terms.get(name, {}).get("weight", 0.0) for name in ("tv", "anomaly"))
    offset = terms.get("anomaly", {}).get("offset", 0.0)
    ref = reference.ReferenceAttack(net, t_target, t_labels, mean=INFO.mean, std=INFO.std, tv=tv,
                                    anomaly=anomaly, offset=offset,
                                    ae=reference.port_autoencoder(ae_params), iterations=ITERATIONS)
    return objective, target, labels, ref, jax.random.normal(keys[3], x01.shape)


@pytest.mark.parametrize("name", ["convnet_tiny", "resnet_tiny"])
def test_objective_and_pixel_gradient_match(name):
    objective, target, labels, ref, x = _setup(name)
    (value, terms), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(x, target, labels)
    t_value, t_grad = ref.value_and_grad(reference.nhwc_to_nchw(x))
    assert set(terms) == {"matching", "tv", "anomaly"}
    np.testing.assert_allclose(float(value), float(t_value), rtol=1e-5)
    grad, t_grad = np.asarray(grad), t_grad.numpy().transpose(0, 2, 3, 1)
    assert np.linalg.norm(grad - t_grad) / np.linalg.norm(t_grad) < 1e-4


def test_optimizer_steps_match():
    """Adam, the step schedule and the box, on the matching term alone.

    With TV and AS on, trajectories part after the box projection puts pixels exactly on the
    bounds: there the two libraries take different subgradients (d|t|/dt at 0: JAX 1, PyTorch 0;
    d clip/dt at a bound: JAX 1/2, PyTorch 1). Values and gradients away from ties agree (above).
    """
    objective, target, labels, ref, x = _setup("convnet_tiny", {})
    att = attack.make_attack(objective, attack.make_optimizer(0.1, ITERATIONS, signed=False), INFO.bounds())
    state = att.init(jax.random.key(0), x.shape)._replace(x=x)
    state = state._replace(opt_state=attack.make_optimizer(0.1, ITERATIONS, signed=False).init(x))
    ref.start(reference.nhwc_to_nchw(x))
    step = jax.jit(att.step)
    for _ in range(ITERATIONS):
        state = step(state, target, labels)
        t_loss = ref.step()
        np.testing.assert_allclose(float(state.loss), float(t_loss), rtol=1e-4)
    # Adam divides by sqrt(v): components with a near-zero gradient amplify float32 rounding.
    diff = np.abs(np.asarray(state.x) - ref.x.detach().numpy().transpose(0, 2, 3, 1))
    assert diff.max() < 1e-3 and np.median(diff) < 1e-5
