"""The engine on 8 devices equals the engine on 1 device.

Runs only with 8 (fake CPU) devices, in its own process (XLA reads the flag at start-up):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/multidevice
`python -m pytest tests` collects and skips it.
"""

import jax
import numpy as np
import pytest

from gipip_jax import attack, engine
from gipip_jax.client import victim_gradient
from gipip_jax.data import DatasetInfo
from gipip_jax.objectives import make_objective
from gipip_jax.victims import make_victim

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: set "
                                "XLA_FLAGS=--xla_force_host_platform_device_count=8")

INFO = DatasetInfo("toy", (8, 8, 3), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), tuple("abcd"))
SHAPE = (1, *INFO.image_shape)
N, ITERATIONS = 8, 10


def inputs_and_builder():
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x01 = jax.random.uniform(jax.random.key(1), (N, *SHAPE))
    labels = np.arange(N)[:, None] % INFO.num_classes
    grads = jax.vmap(lambda x, y: victim_gradient(victim, variables, INFO.normalize(x), y))(x01, labels)
    inputs = engine.AttackInputs(jax.tree.map(np.asarray, grads), labels.astype(np.int32),
                                 engine.per_attack_terms([{"tv": {"weight": w}} for w in np.linspace(0, 0.1, N)]),
                                 np.asarray(jax.vmap(jax.random.key_data)(jax.random.split(jax.random.key(2), N))))

    def build(conv):
        v = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape, conv=conv)
        return make_objective(v, variables, INFO, terms={"tv": {"weight": 1.0}})

    return inputs, build


@pytest.mark.parametrize("strategy", ["unroll", "vmap"])
def test_eight_devices_equal_one_device(strategy):
    inputs, build = inputs_and_builder()
    images = {}
    for devices in (1, 8):
        eng = engine.Engine(build, attack.make_optimizer(0.1, ITERATIONS, signed=False), INFO.bounds(),
                            INFO.denormalize, shape=SHAPE, chunk_size=4, mesh=engine.make_mesh(jax.devices()[:devices]))
        plan = engine.Plan(strategy, N // devices, devices)
        state, result = eng.run_wave(eng.program(plan, inputs), inputs, ITERATIONS)
        if devices == 8:
            assert len(state.attack.x.sharding.device_set) == 8     # the attack axis really is spread out
        assert np.all(result.steps == ITERATIONS)
        images[devices] = result.images01
    # Same per-attack arithmetic; vmap of 8 vs of 1 may reorder float32 sums.
    np.testing.assert_allclose(images[8], images[1], atol=1e-5)
