"""Batched engine: batched equals alone, NaN restarts, no retracing, plan choice."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import attack, engine
from gipip_jax.client import victim_gradient
from gipip_jax.data import DatasetInfo
from gipip_jax.objectives import make_objective
from gipip_jax.victims import make_victim

INFO = DatasetInfo("toy", (8, 8, 3), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), tuple("abcd"))
SHAPE = (1, *INFO.image_shape)
ITERATIONS, CHUNK = 12, 5
N = 4


@pytest.fixture(scope="module")
def study():
    """4 attacks on convnet_tiny: own target image, label, TV weight and key each."""
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x01 = jax.random.uniform(jax.random.key(1), (N, *SHAPE))
    labels = jnp.arange(N)[:, None] % INFO.num_classes
    grads = jax.vmap(lambda x, y: victim_gradient(victim, variables, INFO.normalize(x), y))(x01, labels)
    tv = jnp.array([1e-2, 0.0, 1e-1, 1e-3], jnp.float32)
    inputs = engine.AttackInputs(
        grads, np.asarray(labels), engine.per_attack_terms([{"tv": {"weight": w}} for w in tv.tolist()]),
        np.asarray(jax.vmap(jax.random.key_data)(jax.random.split(jax.random.key(5), N))))
    inputs = jax.tree.map(np.asarray, inputs)

    def build(conv, terms={"tv": {"weight": 1.0}}):  # noqa: B006  (never mutated)
        v = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape, conv=conv)
        return make_objective(v, variables, INFO, terms=terms)

    return build, inputs


def make_engine(build, **kwargs):
    optimizer = attack.make_optimizer(0.1, ITERATIONS, signed=False)
    return engine.Engine(build, optimizer, INFO.bounds(), INFO.denormalize, shape=SHAPE, chunk_size=CHUNK,
                         mesh=engine.make_mesh(jax.devices()[:1]), **kwargs)


@pytest.fixture(scope="module")
def alone_images(study):
    build, inputs = study
    return [alone(build, inputs, n) for n in range(N)]


def alone(build, inputs, n):
    """Attack n run by itself, outside the engine: its jitted step called ITERATIONS times, with
    its TV weight built into the objective (static, not a per-call traced value)."""
    objective = build("native", {"tv": {"weight": float(inputs.terms["tv"]["weight"][n])}})
    a = attack.make_attack(objective, attack.make_optimizer(0.1, ITERATIONS, signed=False), INFO.bounds())
    step = jax.jit(a.step)
    state = a.init(jax.random.fold_in(jax.random.wrap_key_data(inputs.keys[n]), 0), SHAPE)
    grads = jax.tree.map(lambda g: g[n], inputs.target_grads)
    for _ in range(ITERATIONS):
        state = step(state, grads, jnp.asarray(inputs.labels[n]))
    assert int(state.step) == ITERATIONS and np.isfinite(float(state.loss))
    return np.asarray(jnp.clip(INFO.denormalize(state.x), 0, 1))


def run_all(eng, plan, inputs):
    program = eng.program(plan, inputs)
    images = []
    for start in range(0, N, plan.wave_size):
        _, result = eng.run_wave(program, engine.wave_inputs(inputs, np.arange(start, start + plan.wave_size)), ITERATIONS)
        assert np.all(result.steps == ITERATIONS) and not result.failed.any() and not result.tries.any()
        images.append(result.images01)
    return np.concatenate(images)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, per_device", [("unroll", 4), ("vmap", 2), ("vmap_patches", 4), ("vmap_patches", 1)])
def test_batched_attacks_equal_the_same_attacks_run_alone(study, alone_images, strategy, per_device):
    build, inputs = study
    eng = make_engine(build)
    batched = run_all(eng, engine.Plan(strategy, per_device, 1), inputs)
    for n in range(N):
        # Tolerance: vmap and patch matmuls reorder float32 sums; 12 Adam steps keep that below 1e-4.
        np.testing.assert_allclose(batched[n], alone_images[n], atol=1e-4)
    assert len(eng._programs) == 1  # every wave and chunk reused one compiled program


def test_waves_reuse_one_program_without_retracing(study):
    build, inputs = study
    chex.clear_trace_counter()
    # One program traces the objective once for the step and once for the final evaluation.
    eng = make_engine(lambda conv: chex.assert_max_traces(build(conv), n=2))
    plan = engine.Plan("vmap", 2, 1)
    first = run_all(eng, plan, inputs)   # 2 waves x 3 chunks
    again = run_all(eng, plan, inputs)
    np.testing.assert_array_equal(first, again)
    assert list(eng._programs) == [plan]


def test_nan_attack_restarts_or_fails_without_touching_neighbours(study):
    build, inputs = study
    poisoned = inputs._replace(terms={"tv": {"weight": inputs.terms["tv"]["weight"].copy()}})
    poisoned.terms["tv"]["weight"][1] = np.nan          # attack 1's objective is NaN at every step
    eng = make_engine(build, max_tries=2)
    plan = engine.Plan("vmap", N, 1)
    _, result = eng.run_wave(eng.program(plan, inputs), poisoned, ITERATIONS)
    assert result.failed.tolist() == [False, True, False, False] and result.tries.tolist() == [0, 2, 0, 0]
    _, clean = eng.run_wave(eng.program(plan, inputs), inputs, ITERATIONS)
    np.testing.assert_array_equal(np.delete(result.images01, 1, 0), np.delete(clean.images01, 1, 0))


def test_transient_nan_restarts_from_a_fresh_key():
    """Objective is NaN while pixel 0 > 1: key try 0 starts there, try 1 does not."""
    seed = next(s for s in range(100)
                if jax.random.normal(jax.random.fold_in(jax.random.key(s), 0), SHAPE)[0, 0, 0, 0] > 1.2
                and jax.random.normal(jax.random.fold_in(jax.random.key(s), 1), SHAPE)[0, 0, 0, 0] < 0.5)

    def build(conv):
        def objective(x, target, labels, terms):
            loss = jnp.mean((x - target) ** 2) + jnp.where(x[0, 0, 0, 0] > 1.0, jnp.nan, 0.0)
            return loss, {"matching": loss}
        return objective

    inputs = engine.AttackInputs(np.zeros((2, *SHAPE), np.float32), np.zeros((2, 1), np.int32),
                                 engine.per_attack_terms([{}, {}]),
                                 np.stack([jax.random.key_data(jax.random.key(s)) for s in (seed, 7)]))
    eng = engine.Engine(build, attack.make_optimizer(0.05, ITERATIONS, signed=False), (np.full(3, -5.0), np.full(3, 5.0)),
                        lambda x: x, shape=SHAPE, chunk_size=CHUNK, mesh=engine.make_mesh(jax.devices()[:1]))
    _, result = eng.run_wave(eng.program(engine.Plan("unroll", 2, 1), inputs), inputs, ITERATIONS)
    assert result.tries[0] == 1 and not result.failed.any() and np.all(result.steps == ITERATIONS)
    assert np.all(np.isfinite(result.loss))


@pytest.mark.slow
def test_choose_plan_follows_its_rule_and_respects_explicit_settings(study, monkeypatch):
    build, inputs = study
    eng = make_engine(build)
    plan, table = eng.choose_plan(inputs, N, strategy="unroll", attacks_per_device=3)
    assert plan == engine.Plan("unroll", 3, 1) and table == []
    plan, table = eng.choose_plan(inputs, 2, strategy="vmap", log=lambda _: None)
    assert plan == engine.Plan("vmap", 2, 1) and [r["attacks_per_device"] for r in table] == [2]
    assert all(r["bytes_per_device"] > 0 for r in table)
    with pytest.raises(ValueError, match="unknown engine strategy"):
        eng.choose_plan(inputs, N, strategy="pmap")
    monkeypatch.setattr(engine, "_free_bytes_per_device", lambda mesh: 1024.0)   # a device with 1 KiB free
    with pytest.raises(ValueError, match="attacks_per_device"):
        eng.choose_plan(inputs, N, strategy="unroll", attacks_per_device=2)
