"""One attack: schedule, optimizer, box projection, line search keeping the best; run by the engine: chunking, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import attack, engine
from gipip_jax.client import victim_gradient
from gipip_jax.data import DatasetInfo
from gipip_jax.objectives import make_objective
from gipip_jax.parameterizations import dlg, pixels
from gipip_jax.victims import make_victim

INFO = DatasetInfo("toy", (8, 8, 3), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), tuple("abcd"))
ITERATIONS = 24
TERMS = {"tv": {"weight": 1e-2}}


@pytest.fixture(scope="module")
def problem():
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x01 = jax.random.uniform(jax.random.key(1), (1, *INFO.image_shape))
    labels = jnp.array([2])
    target = victim_gradient(victim, variables, INFO.normalize(x01), labels)
    objective = make_objective(victim, variables, INFO, terms=TERMS)
    return objective, target, labels


def run_engine(objective, target, labels, *, key, chunk_size=10, iterations=ITERATIONS):
    """One attack through the engine on one device (the sequential loop): its WaveResult."""
    optimizer = attack.make_optimizer(0.1, iterations, signed=False)
    eng = engine.Engine(lambda conv: objective, optimizer, INFO.bounds(), INFO.denormalize,
                        shape=(1, *INFO.image_shape), chunk_size=chunk_size, mesh=engine.make_mesh(jax.devices()[:1]))
    return eng.run(engine.attack_inputs(target, labels, TERMS, jax.random.key(key)), iterations)


def test_step_schedule_decays_at_reference_milestones():
    schedule = attack.step_decay_schedule(0.1, 10_000)
    # Inverting Gradients: MultiStepLR at 10000 // 2.667, // 1.6, // 1.142 = 3749, 6249, 8756 (float //).
    for count, lr in [(0, 0.1), (3748, 0.1), (3749, 0.01), (6248, 0.01), (6249, 1e-3), (8755, 1e-3), (8756, 1e-4)]:
        np.testing.assert_allclose(schedule(count), lr, rtol=1e-6)


def test_signed_optimizer_sees_only_signs():
    def updates(optimizer, grads):
        params = jnp.zeros(2)
        state = optimizer.init(params)
        out = []
        for g in grads:
            u, state = optimizer.update(jnp.asarray(g), state, params)
            out.append(u)
        return np.stack(out)

    a, b = [[1.0, -1.0], [1.0, -1.0]], [[1.0, -1.0], [100.0, -0.01]]
    signed = attack.make_optimizer(0.1, 100, signed=True)
    np.testing.assert_allclose(updates(signed, a), updates(signed, b))
    plain = attack.make_optimizer(0.1, 100, signed=False)
    assert not np.allclose(updates(plain, a), updates(plain, b))


@pytest.mark.slow
def test_box_projection_holds_every_step(problem):
    objective, target, labels = problem
    lo, hi = INFO.bounds()
    a = attack.make_attack(objective, attack.make_optimizer(0.1, 10, signed=True), (lo, hi))
    state = a.init(jax.random.key(3), (1, *INFO.image_shape))
    assert np.any(np.asarray(state.x) < lo) or np.any(np.asarray(state.x) > hi)  # randn init leaves the box
    for _ in range(3):
        state = a.step(state, target, labels)
        x = np.asarray(state.x)
        assert np.all(x >= lo - 1e-6) and np.all(x <= hi + 1e-6)
    assert int(state.step) == 3 and np.isfinite(float(state.loss))


@pytest.mark.slow
def test_inversion_is_deterministic_and_chunk_size_free(problem):
    objective, target, labels = problem
    first = run_engine(objective, target, labels, key=7)
    again = run_engine(objective, target, labels, key=7)
    np.testing.assert_array_equal(first.images01, again.images01)
    other_chunks = run_engine(objective, target, labels, key=7, chunk_size=7)  # 24 = 3*7 + 3 masked
    np.testing.assert_allclose(other_chunks.images01, first.images01, atol=1e-6)
    other_key = run_engine(objective, target, labels, key=8)
    assert not np.allclose(other_key.images01, first.images01)
    assert first.images01.min() >= 0 and first.images01.max() <= 1


def test_attack_lowers_the_objective(problem):
    objective, target, labels = problem
    shape = (1, *INFO.image_shape)
    a = attack.make_attack(objective, attack.make_optimizer(0.1, 60, signed=False), INFO.bounds())
    start = objective(a.init(jax.random.key(9), shape).x, target, labels)[0]
    state = a.init(jax.random.key(9), shape)
    step = jax.jit(a.step)
    for _ in range(60):
        state = step(state, target, labels)
    assert float(objective(state.x, target, labels)[0]) < float(start)


def test_line_search_attack_keeps_its_best_iterate(problem):
    objective, target, labels = problem
    # no projection: a line search's cached value is the objective at the unprojected step (DLG has no box)
    a = attack.make_attack(objective, attack.make_lbfgs(), parameterization=dlg(INFO.num_classes, learn_labels=False),
                           line_search=True)
    state = a.init(jax.random.key(4), (1, *INFO.image_shape))
    step, losses = jax.jit(a.step), []
    for _ in range(8):
        state = step(state, target, labels)
        losses.append(float(state.loss))
    best_params, best_loss = state.best
    assert float(best_loss) == min(losses)
    assert float(objective(best_params["x"], target, labels)[0]) == pytest.approx(min(losses), rel=1e-5)
    assert a.result(state) is best_params and a.keeps_best


def test_flat_start_is_the_mean_colour_for_every_key_and_the_attack_moves_from_it(problem):
    objective, target, labels = problem
    shape = (1, *INFO.image_shape)
    a = attack.make_attack(objective, attack.make_optimizer(0.1, 20, signed=True), INFO.bounds(),
                           parameterization=pixels(INFO.bounds(), flat=True))
    first, other = a.init(jax.random.key(1), shape), a.init(jax.random.key(2), shape)
    np.testing.assert_array_equal(first.x, other.x)
    np.testing.assert_allclose(INFO.denormalize(first.x), np.broadcast_to(INFO.mean, shape), atol=1e-6)
    start = float(objective(first.x, target, labels)[0])
    step, state = jax.jit(a.step), first
    for _ in range(20):
        state = step(state, target, labels)
    assert float(objective(state.x, target, labels)[0]) < start
