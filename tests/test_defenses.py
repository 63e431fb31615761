"""Defenses: the registry and its flat config fields, and each defense checked against its definition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from gipip_jax import client, defenses, threat_models
from gipip_jax.victims import make_victim

SHAPE = (8, 8, 3)


def tree(seed=0, scale=1.0):
    """A params-like tree without zeros or ties: a (6, 7) matrix, a (5,) vector, a (2, 3, 4) tensor."""
    keys = jax.random.split(jax.random.key(seed), 3)
    return {"dense": {"kernel": scale * jax.random.normal(keys[0], (6, 7)), "bias": scale * jax.random.normal(keys[1], (5,))},
            "conv": {"kernel": scale * jax.random.normal(keys[2], (2, 3, 4))}}


def apply(transform, updates):
    out, _ = transform.update(updates, transform.init(updates), updates)
    return out


def global_norm(t):
    return float(np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree.leaves(t))))


def flat(t):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(t)])


def test_clip_bounds_the_global_norm_and_keeps_the_direction():
    big, small = tree(scale=10.0), tree(scale=0.01)
    clip = defenses.make_defense([{"name": "clip", "clip_norm": 1.0}], jax.random.key(0))
    clipped = apply(clip, big)
    assert global_norm(big) > 1 and global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(flat(clipped), flat(big) / global_norm(big), rtol=1e-5, atol=1e-7)
    jax.tree.map(np.testing.assert_array_equal, apply(clip, small), small)  # already inside: unchanged


@pytest.mark.parametrize("name, distribution", [("gaussian", stats.norm), ("laplace", stats.laplace)])
def test_noise_has_the_stated_distribution(name, distribution):
    zeros = jax.tree.map(lambda leaf: jnp.zeros((4000, *leaf.shape)), tree())  # 4000 * 77 draws
    std = 1e-2
    noise = flat(apply(defenses.make_defense([{"name": "noise", "noise": name, "noise_std": std}], jax.random.key(3)), zeros))
    scale = std if name == "gaussian" else std / math.sqrt(2)  # Laplace(0, b) has std b * sqrt(2)
    assert stats.kstest(noise / scale, distribution.cdf).pvalue > 1e-3
    assert noise.std() == pytest.approx(std, rel=0.02) and abs(noise.mean()) < 1e-4
    other = stats.laplace if name == "gaussian" else stats.norm  # the test can tell them apart
    assert stats.kstest(noise / std, other(scale=1 / math.sqrt(2) if other is stats.laplace else 1).cdf).pvalue < 1e-6


def test_noise_is_added_to_the_update_and_its_key_lives_in_the_state():
    updates = tree()
    noise = defenses.make_defense([{"name": "noise", "noise_std": 0.1}], jax.random.key(1))
    state = noise.init(updates)
    first, state = noise.update(updates, state)
    second, _ = noise.update(updates, state)
    again, _ = noise.update(updates, noise.init(updates))
    jax.tree.map(np.testing.assert_array_equal, first, again)  # same key, same numbers
    assert not np.array_equal(flat(first), flat(second))  # the state's key advanced
    assert 0.05 < np.std(flat(first) - flat(updates)) < 0.2
    other = defenses.make_defense([{"name": "noise", "noise_std": 0.1}], jax.random.key(2))
    assert not np.array_equal(flat(apply(other, updates)), flat(first))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 0.99])
def test_per_tensor_pruning_zeroes_exactly_the_smallest_fraction_of_every_tensor(sparsity):
    updates = tree(seed=4)
    pruned = apply(defenses.make_defense([{"name": "prune", "prune_sparsity": sparsity}], jax.random.key(0)), updates)
    for before, after in zip(jax.tree.leaves(updates), jax.tree.leaves(pruned)):
        before, after = np.ravel(before), np.ravel(after)
        zeroed = after == 0
        assert zeroed.sum() == math.floor(sparsity * before.size)
        np.testing.assert_array_equal(after[~zeroed], before[~zeroed])
        if 0 < zeroed.sum() < before.size:
            assert np.abs(before[zeroed]).max() < np.abs(before[~zeroed]).min()


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_global_pruning_is_one_top_k_over_all_tensors(sparsity):
    updates = jax.tree.map(lambda leaf, s: leaf * s, tree(seed=5), {"dense": {"kernel": 1.0, "bias": 10.0}, "conv": {"kernel": 0.1}})
    spec = {"name": "prune", "prune_sparsity": sparsity, "prune_scope": "global"}
    pruned = apply(defenses.make_defense([spec], jax.random.key(0)), updates)
    before, after = flat(updates), flat(pruned)
    zeroed = after == 0
    assert zeroed.sum() == math.floor(sparsity * before.size)
    assert np.abs(before[zeroed]).max() < np.abs(before[~zeroed]).min()
    np.testing.assert_array_equal(after[~zeroed], before[~zeroed])
    # unlike per-tensor pruning, a tensor of small entries can lose all of them
    assert np.all(np.ravel(pruned["conv"]["kernel"]) == 0) or sparsity < 0.9


def test_pruning_counts_are_exact_under_ties():
    ties = {"w": jnp.ones((10, 10))}
    pruned = defenses.prune_updates(ties, 0.37)
    assert int(np.sum(np.asarray(pruned["w"]) == 0)) == 37


def test_a_chain_applies_its_entries_in_order():
    updates = tree(scale=10.0)
    specs = [{"name": "prune", "prune_sparsity": 0.5, "prune_scope": "global"}, {"name": "clip", "clip_norm": 2.0}]
    chained = apply(defenses.make_defense(specs, jax.random.key(0)), updates)
    by_hand = apply(optax_clip(2.0), defenses.prune_updates(updates, 0.5, "global"))
    jax.tree.map(np.testing.assert_array_equal, chained, by_hand)
    assert global_norm(chained) == pytest.approx(2.0, rel=1e-5)
    jax.tree.map(np.testing.assert_array_equal, apply(defenses.make_defense([], jax.random.key(0)), updates), updates)


def optax_clip(max_norm):
    return defenses.make_defense([{"name": "clip", "clip_norm": max_norm}], jax.random.key(0))


@pytest.mark.parametrize("specs, message", [
    ([{"name": "blur"}], "unknown update defense 'blur'"),
    ([{"name": "dp_sgd", "dp_clip_norm": 1.0}], "acts on the client's step"),
    ([{"name": "clip", "clip_norm": -1.0}], r"clip_norm must be a number in \[0, inf\), got -1.0"),
    ([{"name": "noise", "noise_std": "big"}], "noise_std must be a number in"),
    ([{"name": "noise", "std": 1.0}], r"unknown fields \['std'\]; it takes \['noise', 'noise_std'\]"),
    ([{"name": "noise", "noise": "uniform", "noise_std": 1.0}], r"noise must be one of \('gaussian', 'laplace'\)"),
    ([{"name": "prune", "prune_sparsity": 1.0}], r"prune_sparsity must be a number in \[0, 1\), got 1.0"),
    ([{"name": "prune", "prune_sparsity": 0.5, "prune_scope": "layer"}], "prune_scope must be one of"),
    (["clip"], "must be a dict with a 'name'"),
])
def test_bad_defense_entries_raise_one_clear_error(specs, message):
    with pytest.raises(ValueError, match=message):
        defenses.make_defense(specs, jax.random.key(0))


def test_the_registry_keeps_the_flat_config_vocabulary():
    # study configs, fingerprints and published records use these fields, in this order (the grid's)
    assert list(defenses.DEFENSE_DEFAULTS.items()) == [
        ("clip_norm", 0.0), ("prune_sparsity", 0.0), ("prune_scope", "per_tensor"), ("noise", "gaussian"),
        ("noise_std", 0.0), ("dp_clip_norm", 0.0), ("dp_noise_multiplier", 0.0), ("dropout_rate", 0.0),
        ("soteria_pruning", 0.0)]
    assert [(d.name, d.kind) for d in defenses.REGISTRY.values()] == [
        ("clip", "update"), ("prune", "update"), ("noise", "update"),
        ("dp_sgd", "step"), ("dropout", "step"), ("soteria", "step")]


def test_parse_splits_flat_fields_into_the_update_chain_and_step_defenses():
    flat = {"clip_norm": 1.0, "noise_std": 1e-3, "noise": "laplace", "prune_sparsity": 0.9, "prune_scope": "global",
            "dp_clip_norm": 2.0, "dp_noise_multiplier": 1.1}
    setting = defenses.parse(flat)
    assert setting.fields == {**defenses.DEFENSE_DEFAULTS, **flat}
    assert setting.updates == (  # clip -> prune -> noise, whatever the order given
        {"name": "clip", "clip_norm": 1.0}, {"name": "prune", "prune_sparsity": 0.9, "prune_scope": "global"},
        {"name": "noise", "noise": "laplace", "noise_std": 1e-3})
    assert setting.steps == ({"name": "dp_sgd", "dp_clip_norm": 2.0, "dp_noise_multiplier": 1.1},)
    assert [h.gradient is not None for h in setting.step_hooks()] == [True]
    off = defenses.parse({"noise": "laplace", "prune_scope": "global"})  # switches at 0: nothing on
    assert off.updates == off.steps == () and off.fields["noise"] == "laplace"


def test_the_update_chain_folds_the_key_by_position():
    updates, key = tree(), jax.random.key(4)
    chain = defenses.parse({"clip_norm": 1.0, "noise_std": 0.1}).update_transform(key)
    by_hand = optax.chain(optax.clip_by_global_norm(1.0), defenses.add_gaussian_noise(0.1, jax.random.fold_in(key, 1)))
    jax.tree.map(np.testing.assert_array_equal, apply(chain, updates), apply(by_hand, updates))
    jax.tree.map(np.testing.assert_array_equal, apply(defenses.parse({}).update_transform(key), updates), updates)


@pytest.mark.parametrize("flat, message", [
    ({"noise_sd": 1e-3}, r"unknown defense fields \['noise_sd'\]; known: \['clip_norm'"),
    ({"noise_std": -1.0}, r"noise_std must be a number in \[0, inf\), got -1.0"),
    ({"clip_norm": True}, r"clip_norm must be a number in \[0, inf\), got True"),
    ({"dp_noise_multiplier": 1.0}, "needs dp_clip_norm > 0"),
    ({"prune_sparsity": 1.0}, r"prune_sparsity must be a number in \[0, 1\)"),
    ({"dropout_rate": 1.0}, r"dropout_rate must be a number in \[0, 1\)"),
    ({"soteria_pruning": 1.5}, r"soteria_pruning must be a number in \[0, 1\)"),
    ({"noise": "uniform"}, "noise must be one of"),
])
def test_bad_flat_fields_raise_one_clear_error(flat, message):
    with pytest.raises(ValueError, match=message):
        defenses.parse(flat)


@pytest.fixture
def registry(monkeypatch):
    """The registry and DEFENSE_DEFAULTS as copies, so a test's registrations do not outlive it."""
    monkeypatch.setattr(defenses, "REGISTRY", dict(defenses.REGISTRY))
    monkeypatch.setattr(defenses, "DEFENSE_DEFAULTS", dict(defenses.DEFENSE_DEFAULTS))


def test_a_registered_defense_is_one_declaration(registry, batch):
    victim, variables, x, labels = batch
    quantize = lambda step: optax.stateless(
        lambda u, params=None: jax.tree.map(lambda g: jnp.round(g / step) * step, u))
    defenses.register(defenses.Defense(
        "quantize", "update", {"quantize_step": 0.0}, "quantize_step",
        lambda entry: defenses.check_number(entry, "quantize_step"),
        lambda entry, key: quantize(float(entry["quantize_step"]))))
    assert defenses.DEFENSE_DEFAULTS["quantize_step"] == 0.0
    setting = defenses.parse({"clip_norm": 1.0, "quantize_step": 0.01})
    assert [e["name"] for e in setting.updates] == ["clip", "quantize"]
    shared = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0), defense=setting)
    plain = threat_models.client_update(victim, variables, x, labels, key=jax.random.key(0))
    expected = apply(quantize(0.01), apply(optax.clip_by_global_norm(1.0), plain.grads))
    jax.tree.map(np.testing.assert_array_equal, shared.grads, expected)
    with pytest.raises(ValueError, match="quantize_step must be a number"):
        defenses.parse({"quantize_step": -1})
    with pytest.raises(ValueError, match="already registered"):
        defenses.register(defenses.REGISTRY["clip"])
    with pytest.raises(ValueError, match=r"fields \['noise_std'\] are already taken"):
        defenses.register(defenses.Defense("other_noise", "update", {"noise_std": 0.0}, "noise_std",
                                           lambda entry: None, lambda entry, key: optax.identity()))


def test_only_one_step_defense_may_replace_the_gradient(registry):
    defenses.register(defenses.Defense(
        "sign_sgd", "step", {"sign_sgd": 0.0}, "sign_sgd", lambda entry: defenses.check_number(entry, "sign_sgd"),
        lambda entry: defenses.StepHooks(
            gradient=lambda loss: lambda *args: jax.tree.map(jnp.sign, jax.grad(loss)(*args)))))
    assert defenses.parse({"sign_sgd": 1.0}).steps[0]["name"] == "sign_sgd"
    with pytest.raises(ValueError, match=r"\['dp_sgd', 'sign_sgd'\] all replace the client step's gradient"):
        defenses.parse({"sign_sgd": 1.0, "dp_clip_norm": 1.0})


@pytest.fixture(scope="module")
def batch():
    victim = make_victim("convnet_tiny", 5, SHAPE)
    variables = victim.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (4, *SHAPE))
    return victim, variables, x, jnp.array([0, 4, 2, 1])


@pytest.mark.slow
def test_dp_sgd_clipping_equals_the_per_example_loop(batch):
    victim, variables, x, labels = batch
    per_example = client.per_example_gradients(victim, variables, x, labels)
    norms = [global_norm(client.victim_gradient(victim, variables, x[i:i + 1], labels[i:i + 1])) for i in range(4)]
    clip_norm = float(np.median(norms))  # some examples clipped, some not
    expected = None
    for i in range(4):
        g = client.victim_gradient(victim, variables, x[i:i + 1], labels[i:i + 1])
        factor = min(1.0, clip_norm / norms[i])
        scaled = jax.tree.map(lambda leaf: leaf * factor / 4, g)
        expected = scaled if expected is None else jax.tree.map(np.add, expected, scaled)
    got = defenses.dp_sgd_gradient(per_example, jax.random.key(0), clip_norm, 0.0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), got, expected)
    # noise: (sum of clipped + N(0, (sigma C)^2)) / B
    noisy = defenses.dp_sgd_gradient(per_example, jax.random.key(1), clip_norm, 2.0)
    residual = (flat(noisy) - flat(got)) * 4 / (2.0 * clip_norm)
    assert stats.kstest(residual, stats.norm.cdf).pvalue > 1e-3


@pytest.mark.slow
def test_soteria_prunes_the_features_its_released_code_would(batch):
    victim, variables, x, labels = batch
    path, mask = defenses.soteria_mask(victim, variables, x, 0.5)
    assert path == ("Dense_0",) and mask.shape == (32, 1) and int(mask.sum()) == 16
    # Their loop: for each feature f, the per-example norm of d r_f / d x divided by r_f, summed over the batch.
    features = lambda inputs: defenses.classifier_input(lambda: victim.apply(variables, inputs)).features
    reps = np.asarray(features(x))
    scores = []
    for f in range(reps.shape[1]):
        dx = np.asarray(jax.grad(lambda inputs: features(inputs)[:, f].sum())(x)).reshape(4, -1)
        ratio = np.where(reps[:, f] != 0, np.linalg.norm(dx, axis=1) / np.where(reps[:, f] != 0, reps[:, f], 1), np.inf)
        scores.append(abs(ratio.sum()))
    expected = np.ones(32)
    expected[np.argsort(scores, kind="stable")[:16]] = 0
    np.testing.assert_array_equal(np.ravel(mask), expected)
    grads = client.victim_gradient(victim, variables, x, labels)
    defended = defenses.apply_soteria(grads, path, mask)
    np.testing.assert_array_equal(defended["Dense_0"]["kernel"], grads["Dense_0"]["kernel"] * np.asarray(mask))
    np.testing.assert_array_equal(defended["Dense_0"]["bias"], grads["Dense_0"]["bias"])
    np.testing.assert_array_equal(defended["Conv_0"]["kernel"], grads["Conv_0"]["kernel"])


def test_describe_names_the_changed_defense_fields_in_registry_order_and_ignores_other_keys():
    assert defenses.describe({}) == "none"
    assert defenses.describe({"noise_std": 0.01, "noise": "laplace", "tv_weight": 1e-6, "adaptive": True}) == \
        "noise=laplace, noise_std=0.01"
    assert defenses.describe(defenses.parse({"prune_sparsity": 0.9}).fields) == "prune_sparsity=0.9"
    with pytest.raises(ValueError, match="prune_sparsity"):
        defenses.describe({"prune_sparsity": 1.5})
