"""Defense-aware attackers: every defense's attacker side, checked where it must win, and the study
grid switch that puts the adaptive arm beside the ignorant one."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gipip_jax import adaptive, cli, defenses, objectives, study, threat_models
from gipip_jax.attack import make_attack
from gipip_jax.victims import make_victim

SHAPE = (8, 8, 3)
CONFIG = str(pathlib.Path(__file__).parent.parent / "experiments" / "configs" / "study_cifar10.py")
ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tiny():
    victim = make_victim("convnet_tiny", 4, SHAPE)
    return victim, victim.init(jax.random.key(0))


def case(tiny, setting, batch, threat=None):
    """(x, labels, observed update, matching(x, adapt) -> value) for `setting` at batch size `batch`."""
    victim, variables = tiny
    threat = threat_models.check_threat_config(threat or {})
    x = jax.random.uniform(jax.random.key(1), (batch, *SHAPE), minval=-1.0, maxval=1.0)
    y = jnp.arange(batch, dtype=jnp.int32)
    target = threat_models.aggregated_update(victim, variables, x, y, key=jax.random.key(2),
                                             defense=defenses.parse(setting), **threat).grads
    names = adaptive.in_use([{**setting, "adaptive": True}])
    model = adaptive.attacker_model(names, adaptive.context(victim, variables, batch, threat))
    update_fn = threat_models.attacker_update_fn(victim, variables, **threat)

    @jax.jit
    def value(candidate, k):
        simulated = model.update(update_fn, variables["params"], candidate, y, target, k)
        return model.distance(simulated, target, k, objectives.gradient_cosine_distance)

    def matching(candidate, adapt):
        return value(candidate, adaptive.knowledge({**setting, "adaptive": adapt}, names))

    return x, y, target, matching


def test_every_registered_defense_brings_its_attacker_side():
    for name, defense in defenses.REGISTRY.items():
        assert defense.attacker is not None and len(defense.attacker.knows) > 40, name
    setting = {"prune_sparsity": 0.9, "noise_std": 0.01, "adaptive": True}
    assert adaptive.adapted(setting) == ["prune", "noise"]
    assert [line.split(":")[0] for line in adaptive.knows(setting)] == ["prune", "noise"]
    assert adaptive.adapted({**setting, "adaptive": False}) == [] and adaptive.knows({"adaptive": True}) == []
    with pytest.raises(ValueError, match="adaptive must be True or False"):
        adaptive.adapted({"adaptive": 1})


# Deterministic defenses: the observed update is a function of the image the attacker can simulate once
# it knows the defense, so the adaptive matching is 0 at the ground truth; the ignorant one is not.
DETERMINISTIC = [({"prune_sparsity": 0.9}, 1), ({"prune_sparsity": 0.9, "prune_scope": "global"}, 2),
                 ({"soteria_pruning": 0.5}, 1), ({"soteria_pruning": 0.5}, 2), ({"dropout_rate": 0.5}, 1),
                 ({"dp_clip_norm": 1e-3, "dp_noise_multiplier": 0.0}, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("setting, batch", DETERMINISTIC)
def test_adaptive_matching_is_zero_at_the_truth_where_the_ignorant_one_is_not(tiny, setting, batch):
    x, _, _, matching = case(tiny, setting, batch)
    assert float(matching(x, True)) < 1e-6 < 1e-3 < float(matching(x, False))


@pytest.mark.slow
@pytest.mark.parametrize("setting, batch", DETERMINISTIC[::2])
def test_adaptive_attack_beats_the_ignorant_one_near_the_truth(tiny, setting, batch):
    """The constructed case where the adaptive attack must win: both start from the same perturbed
    ground truth and take the same Adam steps; the truth minimizes the adaptive objective only."""
    x, y, target, matching = case(tiny, setting, batch)
    start = jnp.clip(x + 0.1 * jax.random.normal(jax.random.key(5), x.shape), -1.0, 1.0)
    errors = {}
    for adapt in (False, True):
        attack = make_attack(lambda cand, t, labels: (matching(cand, adapt), {}), optax.adam(0.01),
                             (-jnp.ones(3), jnp.ones(3)))
        state = attack.init(jax.random.key(0), x.shape)._replace(x=start)
        step = jax.jit(attack.step)
        for _ in range(200):
            state = step(state, target, y)
        errors[adapt] = float(jnp.mean((state.x - x) ** 2))
    assert 2 * errors[True] < errors[False], errors


@pytest.mark.parametrize("noise, clients, kind", [("gaussian", 1, "fedsgd"), ("laplace", 1, "fedsgd"),
                                                  ("laplace", 2, "fedsgd"), ("gaussian", 1, "fedavg")])
def test_noise_aware_matching_is_the_noise_negative_log_likelihood(tiny, noise, clients, kind):
    std = 1e-3
    threat = {"clients": clients, **({"kind": "fedavg", "local_steps": 2, "local_lr": 0.1} if kind == "fedavg" else {})}
    x, y, target, matching = case(tiny, {"noise": noise, "noise_std": std}, 2, threat)
    victim, variables = tiny
    simulated = threat_models.attacker_update_fn(victim, variables, **threat_models.check_threat_config(threat))(
        variables["params"], x, y)
    residual = np.concatenate([np.ravel(s - t) for s, t in zip(jax.tree.leaves(simulated), jax.tree.leaves(target))])
    if noise == "laplace" and clients == 1:   # Laplace(0, b), b = std / sqrt 2: NLL per entry |r| / b
        expected = np.mean(np.abs(residual)) / (std / math.sqrt(2))
    else:   # Gaussian, or a sum of clients' Laplace noises modelled by its variance clients * std^2
        expected = np.mean(residual**2) / (2 * clients * std**2)
    assert float(matching(x, True)) == pytest.approx(expected, rel=1e-4)
    assert 0.3 < expected < 3   # at the truth the residual is the noise: about 1/2 (Gaussian) or 1 (Laplace)


def test_dp_sgd_aware_matching_models_the_noise_on_the_mean_clipped_gradient(tiny):
    clip, z, batch = 1e-2, 0.5, 2
    x, y, target, matching = case(tiny, {"dp_clip_norm": clip, "dp_noise_multiplier": z}, batch)
    clean = case(tiny, {"dp_clip_norm": clip, "dp_noise_multiplier": 0.0}, batch)[2]
    residual = np.concatenate([np.ravel(t - c) for t, c in zip(jax.tree.leaves(target), jax.tree.leaves(clean))])
    expected = np.mean(residual**2) / (2 * (z * clip / batch) ** 2)
    assert float(matching(x, True)) == pytest.approx(expected, rel=1e-3) and 0.4 < expected < 0.6


@pytest.mark.parametrize("setting", [{"prune_sparsity": 0.9}, {"noise_std": 1e-3}, {"dropout_rate": 0.5},
                                     {"soteria_pruning": 0.5}, {"clip_norm": 1e-3}])
def test_knowledge_switched_off_is_the_ignorant_attack(tiny, setting):
    """In a study with adaptive arms, the ignorant arm's objective is the plain one (to rounding)."""
    victim, variables = tiny
    x, y, target, matching = case(tiny, setting, 1)
    candidate = x * 0.5
    plain = objectives.gradient_cosine_distance(
        threat_models.attacker_update_fn(victim, variables)(variables["params"], candidate, y), target)
    assert float(matching(candidate, False)) == pytest.approx(float(plain), rel=1e-5)


def _overrides(fixtures_dir, cache, grid):
    return [f"--set=data.name=folder:{fixtures_dir / 'tiny_folder'}", f"--set=data.cache_dir={cache}",
            "--set=data.split=test", "--set=data.image_size=8", "--set=targets.starts=[0, 1]",
            "--set=victim.name=convnet_tiny", "--set=grid.as_weight=[0.0]", *grid, "--set=attack.iterations=10",
            "--set=engine.strategy=unroll", "--set=engine.attacks_per_device=2", "--set=engine.chunk_size=5",
            "--set=metrics.lpips_net=None"]


@pytest.mark.slow
def test_a_study_holds_the_adaptive_arm_beside_the_ignorant_one(fixtures_dir, tmp_path):
    grid = ["--set=grid.prune_sparsity=[0.9]", "--set=grid.adaptive=[False, True]"]
    workdir = tmp_path / "w"
    assert cli.main(["study", "--config", CONFIG + ":smoke", "--workdir", str(workdir),
                     *_overrides(fixtures_dir, tmp_path / "cache", grid)]) == 0
    records = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    ignorant = [r for r in records if "adaptive" not in r["setting"]]
    adapted = [r for r in records if r["setting"].get("adaptive")]
    assert len(ignorant) == len(adapted) == 2
    assert all(r["attacker_knows"] == [] and r["setting_label"] == "prune_sparsity=0.9" for r in ignorant)
    assert all(r["attacker_knows"][0].startswith("prune: that the update was magnitude-pruned")
               and r["setting_label"] == "prune_sparsity=0.9, adaptive=True" for r in adapted)
    # a bad switch is one error line before any data is read
    assert cli.main(["study", "--config", CONFIG + ":smoke", "--workdir", str(tmp_path / "bad"),
                     *_overrides(fixtures_dir, tmp_path / "cache", ["--set=grid.adaptive=[1]"])]) == 2
    assert not (tmp_path / "bad").exists()


def test_published_studies_keep_their_fingerprint():
    """The adaptive field came after studies were published: at its default it is left out of the
    fingerprint and of the records' settings, so those studies still resume and pair with new records."""
    path = ROOT / "experiments" / "results" / "as_claim" / "convnet_bs4_mse_confirm" / "results.jsonl"
    record = json.loads(path.read_text().splitlines()[0])
    config = ml_collections.ConfigDict(record["config"])
    assert "adaptive" not in config.grid
    config.grid.adaptive = [False]
    assert study.fingerprint(config) == record["fingerprint"]
    config.grid.adaptive = [False, True]
    assert study.fingerprint(config) != record["fingerprint"]
