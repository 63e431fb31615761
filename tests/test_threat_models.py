"""Threat models: FedSGD / FedAvg client updates, secure aggregation, the attacker's simulation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import client, defenses, objectives, threat_models
from gipip_jax.victims import make_victim

SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def setup():
    victim = make_victim("convnet_tiny", 5, SHAPE)
    variables = victim.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (4, *SHAPE))
    return victim, variables, x, jnp.array([0, 4, 2, 1])


def close(a, b, rtol=1e-4, atol=1e-7):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def test_fedsgd_is_the_client_gradient(setup):
    victim, variables, x, labels = setup
    update = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0))
    assert update.batch_size == 4
    jax.tree.map(np.testing.assert_array_equal, update.grads, client.fedsgd_update(victim, variables, x, labels).grads)


@pytest.mark.parametrize("local_steps, local_batch_size", [(1, 0), (3, 0), (3, 2), (5, 1)])
def test_fedavg_update_equals_explicit_local_sgd_steps(setup, local_steps, local_batch_size):
    victim, variables, x, labels = setup
    lr = 0.05
    update = threat_models.client_update(victim, variables, x, labels, kind="fedavg", key=jax.random.key(0),
                                         local_steps=local_steps, local_lr=lr, local_batch_size=local_batch_size)
    size = local_batch_size or 4
    params = variables["params"]
    for step in range(local_steps):
        b = step % (4 // size)
        g = client.victim_gradient(victim, {**variables, "params": params}, x[b * size:(b + 1) * size],
                                   labels[b * size:(b + 1) * size])
        params = jax.tree.map(lambda p, d: p - lr * d, params, g)
    close(update.grads, jax.tree.map(jnp.subtract, params, variables["params"]), rtol=1e-4, atol=1e-6)


def test_the_attacker_simulates_the_same_update(setup):
    victim, variables, x, labels = setup
    for settings in ({"kind": "fedsgd"}, {"kind": "fedavg", "local_steps": 3, "local_lr": 0.1, "local_batch_size": 2}):
        shared = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0), **settings)
        simulated = threat_models.attacker_update_fn(victim, variables, **settings)(variables["params"], x, labels)
        close(simulated, shared.grads)
    # and with secure aggregation over 2 clients, the simulation is the sum over the two halves
    settings = {"kind": "fedavg", "local_steps": 2, "local_lr": 0.1}
    shared = threat_models.aggregated_update(victim, variables, x, labels, clients=2, key=jax.random.key(0), **settings)
    simulated = threat_models.attacker_update_fn(victim, variables, clients=2, **settings)(variables["params"], x, labels)
    close(simulated, shared.grads)
    assert shared.batch_size == 4


def test_secure_aggregation_reveals_only_the_sum(setup):
    victim, variables, x, labels = setup
    first = threat_models.client_update(victim, variables, x[:2], labels[:2], key=jax.random.key(0))
    second = threat_models.client_update(victim, variables, x[2:], labels[2:], key=jax.random.key(0))
    total = threat_models.secure_aggregate([first, second])
    close(total.grads, jax.tree.map(jnp.add, first.grads, second.grads), rtol=0, atol=0)
    assert total.batch_size == 4
    # the attacker's input is one tree and a count: nothing per client survives
    assert [f.name for f in dataclasses.fields(total)] == ["grads", "batch_size"]
    assert jax.tree.structure(total.grads) == jax.tree.structure(first.grads)
    # other individual updates with the same sum give the attacker exactly the same input
    shift = jax.tree.map(lambda g: jnp.full_like(g, 0.5), first.grads)
    moved = [client.SharedUpdate(jax.tree.map(jnp.add, second.grads, shift), 2),
             client.SharedUpdate(jax.tree.map(jnp.subtract, first.grads, shift), 2)]
    close(threat_models.secure_aggregate(moved).grads, total.grads, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        threat_models.secure_aggregate([])
    other = make_victim("convnet_tiny", 7, SHAPE).init(jax.random.key(0))["params"]
    with pytest.raises(ValueError, match="tree structure and shapes"):
        threat_models.secure_aggregate([first, client.SharedUpdate(other, 2)])


def test_secure_aggregation_of_fedsgd_clients_is_the_batch_gradient_times_the_clients(setup):
    """Undefended FedSGD: 4 single-image clients summed = 4 x the gradient of the batch of 4, a scale
    cosine matching cannot see (experiments/defenses.py reads secure aggregation off the bs-4 attack)."""
    victim, variables, x, labels = setup
    summed = threat_models.aggregated_update(victim, variables, x, labels, clients=4, key=jax.random.key(0))
    batch = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0))
    close(summed.grads, jax.tree.map(lambda g: 4 * g, batch.grads), rtol=1e-5, atol=1e-7)
    assert summed.batch_size == batch.batch_size == 4


def test_every_aggregated_client_draws_its_own_noise(setup):
    victim, variables, x, labels = setup
    noise = defenses.parse({"noise_std": 1.0})
    clean = threat_models.aggregated_update(victim, variables, x, labels, clients=2, key=jax.random.key(0))
    noisy = threat_models.aggregated_update(victim, variables, x, labels, clients=2, key=jax.random.key(0), defense=noise)
    residual = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(noisy.grads), jax.tree.leaves(clean.grads))])
    assert residual.std() == pytest.approx(np.sqrt(2.0), rel=0.05)  # two independent N(0, 1) draws summed


def test_the_defense_transforms_what_the_client_shares(setup):
    victim, variables, x, labels = setup
    defense = defenses.parse({"prune_sparsity": 0.9, "prune_scope": "global"})
    for kind, extra in (("fedsgd", {}), ("fedavg", {"local_steps": 2, "local_lr": 0.1})):
        update = threat_models.client_update(victim, variables, x, labels, kind=kind, key=jax.random.key(0),
                                             defense=defense, **extra)
        plain = threat_models.client_update(victim, variables, x, labels, kind=kind, key=jax.random.key(0), **extra)
        close(update.grads, defenses.prune_updates(plain.grads, 0.9, "global"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="must be a defenses.DefenseSetting"):
        threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0),
                                    defense=[{"name": "prune", "prune_sparsity": 0.9}])


@pytest.mark.slow
def test_dp_sgd_in_the_client_step(setup):
    victim, variables, x, labels = setup
    clipped = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0),
                                          defense=defenses.parse({"dp_clip_norm": 0.1}))
    per_example = client.per_example_gradients(victim, variables, x, labels)
    close(clipped.grads, defenses.dp_sgd_gradient(per_example, jax.random.key(0), 0.1, 0.0))
    dp = defenses.parse({"dp_clip_norm": 0.1, "dp_noise_multiplier": 1.0})
    noisy = [threat_models.client_update(victim, variables, x, labels, key=jax.random.key(k), defense=dp)
             for k in (0, 0, 1)]
    jax.tree.map(np.testing.assert_array_equal, noisy[0].grads, noisy[1].grads)
    residual = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(noisy[0].grads), jax.tree.leaves(clipped.grads))])
    assert residual.std() == pytest.approx(1.0 * 0.1 / 4, rel=0.05)
    assert not np.array_equal(jax.tree.leaves(noisy[0].grads)[0], jax.tree.leaves(noisy[2].grads)[0])


def test_dropout_drops_classifier_inputs_during_the_client_step(setup):
    victim, variables, x, labels = setup
    plain = threat_models.client_update(victim, variables, x[:1], labels[:1], key=jax.random.key(0))
    dropout = defenses.parse({"dropout_rate": 0.5})
    dropped = [threat_models.client_update(victim, variables, x[:1], labels[:1], key=jax.random.key(k),
                                           defense=dropout).grads["Dense_0"]["kernel"] for k in (0, 0, 1)]
    np.testing.assert_array_equal(dropped[0], dropped[1])
    assert not np.array_equal(dropped[0], dropped[2])
    # for one example, the kernel gradient's row f is r_f * mask_f / (1 - p) * dL/dlogits: dropped rows are 0
    zero_rows = np.all(np.asarray(dropped[0]) == 0, axis=1)
    live = np.any(np.asarray(plain.grads["Dense_0"]["kernel"]) != 0, axis=1)
    assert 4 <= (zero_rows & live).sum() <= live.sum() - 4  # about half of the live features dropped
    same = threat_models.client_update(victim, variables, x[:1], labels[:1], key=jax.random.key(0),
                                       defense=defenses.parse({"dropout_rate": 0.0}))
    jax.tree.map(np.testing.assert_array_equal, same.grads, plain.grads)


def test_soteria_in_the_client_step_prunes_fc_rows(setup):
    victim, variables, x, labels = setup
    update = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0),
                                         defense=defenses.parse({"soteria_pruning": 0.75}))
    plain = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0))
    path, mask = defenses.soteria_mask(victim, variables, x, 0.75)
    assert int(mask.sum()) == 8
    np.testing.assert_array_equal(update.grads["Dense_0"]["kernel"], plain.grads["Dense_0"]["kernel"] * np.asarray(mask))
    np.testing.assert_array_equal(update.grads["Conv_0"]["kernel"], plain.grads["Conv_0"]["kernel"])


def test_the_fedavg_simulation_is_differentiable_in_the_images():
    victim = make_victim("lenet", 5, SHAPE)  # smooth (sigmoid): finite differences are meaningful
    variables = victim.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, *SHAPE))
    labels = jnp.array([1, 3])
    settings = {"kind": "fedavg", "local_steps": 3, "local_lr": 0.01, "local_batch_size": 1}
    target = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0), **settings).grads
    info = type("Info", (), {"denormalize": staticmethod(lambda v: v)})()
    objective = objectives.make_objective(victim, variables, info,
                                          update_fn=threat_models.attacker_update_fn(victim, variables, **settings))
    loss = lambda candidate: objective(candidate, target, labels)[0]
    candidate = x + 0.3 * jax.random.normal(jax.random.key(2), x.shape)
    assert float(loss(x)) < 1e-5 < float(loss(candidate))  # the true images match exactly
    grad = jax.grad(loss)(candidate)
    direction = jax.random.normal(jax.random.key(3), x.shape)
    eps = 1e-2
    numeric = (loss(candidate + eps * direction) - loss(candidate - eps * direction)) / (2 * eps)
    assert float(jnp.vdot(grad, direction)) == pytest.approx(float(numeric), rel=0.05)


@pytest.mark.parametrize("settings, message", [
    ({"kind": "fedprox"}, "unknown threat model kind"),
    ({"kind": "fedsgd", "local_steps": 3}, "use kind='fedavg'"),
    ({"kind": "fedavg", "local_steps": 0}, "local_steps must be an integer >= 1"),
    ({"kind": "fedavg", "local_lr": 0.0}, "needs local_lr > 0"),
    ({"kind": "fedavg", "local_batch_size": 3}, "does not divide"),
])
def test_bad_client_settings_raise_one_clear_error(setup, settings, message):
    victim, variables, x, labels = setup
    with pytest.raises(ValueError, match=message):
        threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0), **settings)


def test_bad_threat_configs_raise(setup):
    victim, variables, x, labels = setup
    assert threat_models.check_threat_config({"kind": "fedavg", "local_steps": 5}) == {
        **threat_models.THREAT_DEFAULTS, "kind": "fedavg", "local_steps": 5}
    with pytest.raises(ValueError, match="unknown threat-model fields"):
        threat_models.check_threat_config({"steps": 5})
    with pytest.raises(ValueError, match="clients must be"):
        threat_models.attacker_update_fn(victim, variables, clients=0)
    with pytest.raises(ValueError, match="cannot be split evenly among 3"):
        threat_models.aggregated_update(victim, variables, x, labels, clients=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown threat model kind"):
        threat_models.attacker_update_fn(victim, variables, kind="fedprox")


def test_flat_config_fields_drive_client_and_attacker_under_jit(setup):
    victim, variables, x, labels = setup
    threat = threat_models.check_threat_config({"kind": "fedavg", "local_steps": 2, "local_lr": 0.1, "clients": 2})
    defense = defenses.parse({"prune_sparsity": 0.5, "dropout_rate": 0.25})

    @jax.jit
    def shared(x, labels, key):
        return threat_models.aggregated_update(victim, variables, x, labels, key=key, defense=defense, **threat).grads

    eager = threat_models.aggregated_update(victim, variables, x, labels, key=jax.random.key(5), defense=defense,
                                            **threat).grads
    close(shared(x, labels, jax.random.key(5)), eager, rtol=1e-5, atol=1e-7)
    simulated = threat_models.attacker_update_fn(victim, variables, **threat)(variables["params"], x, labels)
    assert jax.tree.structure(simulated) == jax.tree.structure(eager)
