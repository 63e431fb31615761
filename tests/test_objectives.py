"""Objective terms against NumPy transcriptions of their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import objectives
from gipip_jax.client import make_loss_fn
from gipip_jax.data import DatasetInfo
from gipip_jax.victims import make_victim

RNG = np.random.default_rng(0)
INFO = DatasetInfo("toy", (8, 8, 3), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), tuple("abcd"))


def random_tree():
    return {"a": RNG.normal(size=(3, 4)).astype(np.float32), "b": {"c": RNG.normal(size=(5,)).astype(np.float32)}}


def test_cosine_distance_is_one_global_cosine():
    g, t = random_tree(), random_tree()
    flat_g = np.concatenate([g["a"].ravel(), g["b"]["c"]])
    flat_t = np.concatenate([t["a"].ravel(), t["b"]["c"]])
    expected = 1 - flat_g @ flat_t / (np.linalg.norm(flat_g) * np.linalg.norm(flat_t))
    np.testing.assert_allclose(objectives.gradient_cosine_distance(g, t), expected, rtol=1e-5)
    np.testing.assert_allclose(objectives.gradient_cosine_distance(g, g), 0.0, atol=1e-6)
    np.testing.assert_allclose(objectives.gradient_cosine_distance(g, jax.tree.map(lambda v: -3 * v, g)), 2.0, atol=1e-6)


def test_l2_distance():
    g, t = random_tree(), random_tree()
    expected = ((g["a"] - t["a"]) ** 2).sum() + ((g["b"]["c"] - t["b"]["c"]) ** 2).sum()
    np.testing.assert_allclose(objectives.gradient_l2_distance(g, t), expected, rtol=1e-5)


def test_total_variation_matches_formula():
    x = RNG.normal(size=(2, 5, 6, 3)).astype(np.float32)
    expected = np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=1)).mean()
    np.testing.assert_allclose(objectives.total_variation(x), expected, rtol=1e-5)
    assert float(objectives.total_variation(np.ones((1, 4, 4, 3), np.float32))) == 0.0


def test_anomaly_score_matches_formula():
    x01 = RNG.uniform(size=(2, 4, 4, 3)).astype(np.float32)
    reconstruct = lambda v: 0.9 * v + 0.05  # noqa: E731  (any map [0,1] -> [0,1])
    for c in (0.0, 1e-3, 0.5):
        expected = abs(((x01 - (0.9 * x01 + 0.05)) ** 2).mean() - c)
        np.testing.assert_allclose(objectives.anomaly_score(x01, reconstruct, c), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def victim_setup():
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x = jnp.asarray(RNG.normal(size=(2, *INFO.image_shape)), jnp.float32)
    labels = jnp.array([1, 3])
    target = jax.grad(make_loss_fn(victim, variables))(variables["params"], x, labels)
    return victim, variables, x, labels, target


def test_objective_sums_weighted_terms(victim_setup):
    victim, variables, x, labels, target = victim_setup
    reconstruct = lambda v: jnp.full_like(v, 0.5)  # noqa: E731
    terms = {"tv": {"weight": 0.3}, "anomaly": {"weight": 2.0, "offset": 0.01}}
    objective = objectives.make_objective(victim, variables, INFO, terms=terms, reconstruct=reconstruct)
    candidate = x + 0.1
    loss, terms = objective(candidate, target, labels)
    x01 = np.clip(np.asarray(candidate) * np.array(INFO.std) + np.array(INFO.mean), 0, 1)
    np.testing.assert_allclose(terms["anomaly"], abs(((x01 - 0.5) ** 2).mean() - 0.01), rtol=1e-5)
    np.testing.assert_allclose(terms["tv"], objectives.total_variation(candidate), rtol=1e-6)
    np.testing.assert_allclose(loss, terms["matching"] + 0.3 * terms["tv"] + 2.0 * terms["anomaly"], rtol=1e-6)
    # At the true images the matching term vanishes.
    _, at_truth = objective(x, target, labels)
    np.testing.assert_allclose(at_truth["matching"], 0.0, atol=1e-5)


def test_per_call_terms_are_traceable(victim_setup):
    victim, variables, x, labels, target = victim_setup
    reconstruct = lambda v: jnp.full_like(v, 0.5)  # noqa: E731
    build = {"tv": {"weight": 1.0}, "anomaly": {"weight": 1.0, "offset": 0.0}}
    objective = objectives.make_objective(victim, variables, INFO, terms=build, reconstruct=reconstruct)
    per_call = {"tv": {"weight": 0.3}, "anomaly": {"weight": 2.0, "offset": 0.01}}
    fixed = objectives.make_objective(victim, variables, INFO, terms=per_call, reconstruct=reconstruct)
    traced = jax.jit(objective)(x + 0.1, target, labels, jax.tree.map(jnp.float32, per_call))
    np.testing.assert_allclose(traced[0], fixed(x + 0.1, target, labels)[0], rtol=1e-5)


def test_per_call_terms_must_name_the_objectives_terms(victim_setup):
    """A per-call setting of a term the objective was not built with is an error, not silently
    dropped (it used to be: a weight > 0 given per call for a term off at build time did nothing)."""
    victim, variables, x, labels, target = victim_setup
    objective = objectives.make_objective(victim, variables, INFO, terms={"tv": {"weight": 0.1}})
    with pytest.raises(ValueError, match="built with settings for"):
        objective(x, target, labels, {"tv": {"weight": 0.1}, "bn_stats": {"weight": 1.0}})
    with pytest.raises(ValueError, match="built with settings for"):
        jax.jit(objective)(x, target, labels, {"bn_stats": {"weight": jnp.float32(1.0)}})
    with pytest.raises(ValueError, match="built with settings for"):
        objectives.make_objective(victim, variables, INFO)(x, target, labels, {"tv": {"weight": 0.1}})
    with pytest.raises(ValueError, match="unknown objective term"):
        objectives.make_objective(victim, variables, INFO, terms={"tvv": {"weight": 0.1}})


def test_update_fn_replaces_the_simulated_client_update(victim_setup):
    victim, variables, x, labels, target = victim_setup
    doubled = lambda p, xx, yy: jax.tree.map(lambda g: 2 * g, jax.grad(make_loss_fn(victim, variables))(p, xx, yy))  # noqa: E731
    objective = objectives.make_objective(victim, variables, INFO, matching="l2", update_fn=doubled)
    expected = sum(float(jnp.sum(t ** 2)) for t in jax.tree.leaves(target))  # |2t - t|^2 at the truth
    np.testing.assert_allclose(objective(x, target, labels)[0], expected, rtol=1e-4)


def test_zero_weight_switches_term_off(victim_setup):
    victim, variables, x, labels, target = victim_setup
    objective = objectives.make_objective(victim, variables, INFO)  # IG without TV: matching only
    loss, terms = objective(x + 0.1, target, labels)
    assert set(terms) == {"matching"}
    np.testing.assert_allclose(loss, terms["matching"])
    # From a config: a term whose weight is 0 in every setting is not in the objective at all.
    settings = [{"tv_weight": 0.0, "as_weight": 0.0, "as_offset": 0.001, "bn_weight": 0.0},
                {"tv_weight": 1e-2, "as_weight": 0.0, "as_offset": 0.001, "bn_weight": None}]
    assert objectives.terms_in_use(settings[:1]) == [] and objectives.terms_in_use(settings) == ["tv"]
    names = objectives.terms_in_use(settings)
    assert objectives.term_settings(settings[1], names) == {"tv": {"weight": 1e-2}}
    built = objectives.make_objective(victim, variables, INFO, terms=objectives.term_settings(settings[1], names))
    loss, terms = built(x + 0.1, target, labels)
    assert set(terms) == {"matching", "tv"}
    np.testing.assert_allclose(loss, terms["matching"] + 1e-2 * terms["tv"], rtol=1e-6)
    # The GI-PIP setting: its AS weight and offset c land in the "anomaly" term's settings.
    gipip = {"tv_weight": 1e-6, "as_weight": 1e-4, "as_offset": 0.001}
    assert objectives.term_settings(gipip, objectives.terms_in_use([gipip])) == {
        "tv": {"weight": 1e-6}, "anomaly": {"weight": 1e-4, "offset": 0.001}}
    assert objectives.term_weight({"tv": {"weight": 0.5}}, "tv") == 0.5
    assert objectives.term_weight({"tv": {"weight": 0.5}}, "matching") == 1.0


def test_objective_errors(victim_setup):
    victim, variables, *_ = victim_setup
    with pytest.raises(ValueError, match="matching"):
        objectives.make_objective(victim, variables, INFO, matching="cos")
    with pytest.raises(ValueError, match="autoencoder"):
        objectives.make_objective(victim, variables, INFO, terms={"anomaly": {"weight": 1.0, "offset": 0.0}})


def _with_running_stats(variables, path, mean, var):
    stats = jax.tree.map(lambda v: v, variables["batch_stats"])  # a copy
    node = stats
    for part in path.split("/"):
        node = node[part]
    node["mean"], node["var"] = mean, var
    return {**variables, "batch_stats": stats}


def test_bn_statistics_match_numpy_and_term_is_zero_at_running_stats(victim_setup):
    victim, variables, x, labels, target = victim_setup
    found = objectives.batch_norm_statistics(victim, variables, x)
    assert list(found) == [f"BatchNorm_{i}" for i in range(5)]
    mean, var, run_mean, run_var = found["BatchNorm_0"]
    # BatchNorm_0 sees Conv_0(x) (no bias); its batch statistics are over (B, H, W).
    conv0 = jax.lax.conv_general_dilated(x, variables["params"]["Conv_0"]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(mean, np.asarray(conv0).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var, np.asarray(conv0).var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(run_mean, variables["batch_stats"]["BatchNorm_0"]["mean"])
    bn = objectives.bn_statistics_loss(victim, variables)
    assert float(bn(x)) > 0.1
    # Make every layer's running statistics its batch statistics on x, layer by layer in call order
    # (a layer's input depends on the earlier layers' running statistics): then the term is zero.
    matched = variables
    for path in found:
        mean, var, _, _ = objectives.batch_norm_statistics(victim, matched, x)[path]
        matched = _with_running_stats(matched, path, mean, var)
    bn_matched = objectives.bn_statistics_loss(victim, matched)
    np.testing.assert_allclose(bn_matched(x), 0.0, atol=1e-5)
    assert float(bn_matched(x + 0.5)) > 0.1
    grad = jax.grad(bn_matched)(x)
    assert np.all(np.isfinite(grad))


def test_bn_term_in_objective(victim_setup):
    victim, variables, x, labels, target = victim_setup
    settings = {"tv": {"weight": 0.1}, "bn_stats": {"weight": 0.5}}
    objective = objectives.make_objective(victim, variables, INFO, terms=settings)
    loss, terms = objective(x + 0.1, target, labels)
    assert set(terms) == {"matching", "tv", "bn_stats"}
    np.testing.assert_allclose(terms["bn_stats"], objectives.bn_statistics_loss(victim, variables)(x + 0.1), rtol=1e-6)
    np.testing.assert_allclose(loss, terms["matching"] + 0.1 * terms["tv"] + 0.5 * terms["bn_stats"], rtol=1e-6)
    per_call = jax.tree.map(jnp.float32, {"tv": {"weight": 0.1}, "bn_stats": {"weight": 2.0}})
    traced_loss, _ = jax.jit(objective)(x + 0.1, target, labels, per_call)
    np.testing.assert_allclose(traced_loss, terms["matching"] + 0.1 * terms["tv"] + 2.0 * terms["bn_stats"], rtol=1e-5)
    lenet = make_victim("lenet", INFO.num_classes, INFO.image_shape)
    with pytest.raises(ValueError, match="BatchNorm"):
        objectives.make_objective(lenet, lenet.init(jax.random.key(0)), INFO, terms=settings)


def test_clamp01_passes_gradient_one_on_the_bounds_like_torch_clamp():
    from gipip_jax.objectives import clamp01

    x = jnp.array([-0.5, 0.0, 0.3, 1.0, 1.5])
    np.testing.assert_allclose(clamp01(x), [0.0, 0.0, 0.3, 1.0, 1.0])
    np.testing.assert_allclose(jax.grad(lambda v: clamp01(v).sum())(x), [0.0, 1.0, 1.0, 1.0, 0.0])


@pytest.fixture
def mean_intensity_term():
    """A toy term registered for one test: |mean(x01) - level|, weight field mean_weight, option
    level from config field mean_level. Removed from the registry again afterwards."""

    def build(context):
        def value(x, target_grads, labels, level):
            return jnp.abs(jnp.mean(objectives.clamp01(context.info.denormalize(x))) - level)
        return value

    term = objectives.Term("mean_intensity", "mean_weight", build, {"level": "mean_level"})
    objectives.register_term(term)
    try:
        yield term
    finally:
        objectives.TERMS.pop(term.name, None)


def test_registered_term_is_used_by_name_and_by_its_config_fields(victim_setup, mean_intensity_term):
    victim, variables, x, labels, target = victim_setup
    with pytest.raises(ValueError, match="already registered"):
        objectives.register_term(mean_intensity_term)
    with pytest.raises(ValueError, match="already registered"):   # a config field already taken
        objectives.register_term(objectives.Term("other", "tv_weight", mean_intensity_term.build))
    setting = {"tv_weight": 1e-2, "as_weight": 0.0, "mean_weight": 0.5, "mean_level": 0.2}
    names = objectives.terms_in_use([setting])
    assert names == ["tv", "mean_intensity"]
    terms = objectives.term_settings(setting, names)
    assert terms == {"tv": {"weight": 1e-2}, "mean_intensity": {"weight": 0.5, "level": 0.2}}
    objective = objectives.make_objective(victim, variables, INFO, terms=terms)
    candidate = x + 0.1
    loss, found = objective(candidate, target, labels)
    assert set(found) == {"matching", "tv", "mean_intensity"}
    x01 = np.clip(np.asarray(candidate) * np.array(INFO.std) + np.array(INFO.mean), 0, 1)
    np.testing.assert_allclose(found["mean_intensity"], abs(x01.mean() - 0.2), rtol=1e-5)
    np.testing.assert_allclose(loss, found["matching"] + 1e-2 * found["tv"] + 0.5 * found["mean_intensity"], rtol=1e-6)
    # Its settings are per-call values like any other term's (traced here).
    per_call = jax.tree.map(jnp.float32, {"tv": {"weight": 1e-2}, "mean_intensity": {"weight": 2.0, "level": 0.4}})
    traced, traced_terms = jax.jit(objective)(candidate, target, labels, per_call)
    np.testing.assert_allclose(traced_terms["mean_intensity"], abs(x01.mean() - 0.4), rtol=1e-5)
    np.testing.assert_allclose(traced, found["matching"] + 1e-2 * found["tv"] + 2.0 * traced_terms["mean_intensity"],
                               rtol=1e-5)
    # A weight of 0 in every setting leaves it out.
    assert objectives.terms_in_use([{**setting, "mean_weight": 0.0}]) == ["tv"]
