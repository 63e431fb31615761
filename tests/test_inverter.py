"""Learning to Invert (inverter.py): the training pairs are the defended client updates, the trained
network beats the mean-image baseline on held-out auxiliary images, the checkpoint round-trips with
its metadata, and LTI runs through the one runner alone and as the start of the optimization attack."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gipip_jax import checkpoints, cli, configs, data, defenses, inverter, study, threat_models
from gipip_jax.victims import make_victim

CONFIGS = pathlib.Path(__file__).parent.parent / "experiments" / "configs"
SIDE = 8


@pytest.fixture(scope="module")
def patches(fixtures_dir, tmp_path_factory):
    """Real 8x8 CIFAR-10 images: the 16 non-overlapping crops of each fixture image; auxiliary ones
    from the train split's 12 images (192), held-out ones from the test split's 6 (96)."""
    cache = tmp_path_factory.mktemp("cache")

    def crops(split):
        images = data.load(f"folder:{fixtures_dir / 'tiny_folder'}", split, cache_dir=str(cache))
        x, y = images.take(np.arange(len(images.labels)))
        k = 32 // SIDE
        x = x.reshape(len(x), k, SIDE, k, SIDE, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, SIDE, SIDE, 3)
        return x, np.repeat(y, k * k), images.info

    x_aux, y_aux, info = crops("train")
    x_held, y_held, _ = crops("test")
    return x_aux, y_aux, x_held, y_held, info


def lenet():
    victim = make_victim("lenet", 3, (SIDE, SIDE, 3))
    return victim, victim.init(jax.random.key(0))


@pytest.mark.parametrize("fields", [{"noise_std": 0.1}, {"dropout_rate": 0.5}])   # an update and a step defense
def test_training_step_learns_from_the_defended_client_updates(patches, fields):
    x_aux, y_aux, _, _, info = patches
    victim, variables = lenet()
    pairs = inverter.make_pairs(victim, variables, info.normalize, defense_fields=fields)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    spec = inverter.make_spec(num_params, (1, SIDE, SIDE, 3), hidden=16, num_bins=1000)
    frozen = {"scale": jnp.asarray(100.0), "bins": jnp.asarray(inverter.hash_bins(num_params, 1000, 0))}
    module = inverter.InverterMLP(spec.hidden, spec.out_shape)
    optimizer = optax.sgd(0.1)   # linear in the gradient: float rounding is not amplified as by Adam's first step
    params = module.init(jax.random.key(1), jnp.zeros((1, spec.num_features)))["params"]
    state = inverter.TrainState(params, optimizer.init(params))
    fit_step = jax.jit(inverter.make_fit_step(module, optimizer))
    step = inverter.make_step(pairs, fit_step, jnp.asarray(x_aux), jnp.asarray(y_aux), frozen, spec.num_features)
    indices, key = np.arange(8)[:, None] * 3, jax.random.key(7)
    trained, _ = step(state, jnp.asarray(indices), key)

    # the client's own update, as the study makes targets' updates: aggregated_update with one client
    # calls client_update with fold_in(key, 0)
    def client(x, y, k, defense):
        return threat_models.client_update(victim, variables, info.normalize(x), y, key=jax.random.fold_in(k, 0),
                                           defense=defense).grads

    keys = inverter.pair_keys(key, len(indices))
    x, y = x_aux[indices], y_aux[indices]
    outcome = {}
    for name, defense in (("defended", defenses.parse(fields)), ("undefended", None)):
        one = jax.jit(lambda x, y, k: inverter.features(client(x, y, k, defense), frozen, spec.num_features))  # noqa: B023
        feats = jnp.stack([one(x[i], y[i], keys[i]) for i in range(len(indices))])
        outcome[name] = fit_step(state, feats, jnp.asarray(x))[0].params
    flat = lambda p: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(p)])  # noqa: E731
    start = flat(state.params)
    moved, defended, undefended = (flat(p) - start for p in (trained.params, outcome["defended"], outcome["undefended"]))
    np.testing.assert_allclose(moved, defended, rtol=1e-3, atol=1e-4 * np.max(np.abs(defended)))
    assert np.linalg.norm(moved - undefended) > 0.05 * np.linalg.norm(undefended)
    # fresh noise and masks at every step: other step keys, other updates
    pairs_jit = jax.jit(pairs)
    same = pairs_jit(jnp.asarray(x), jnp.asarray(y), keys)
    other = pairs_jit(jnp.asarray(x), jnp.asarray(y), inverter.pair_keys(jax.random.key(8), len(indices)))
    assert not np.allclose(inverter.flatten(same), inverter.flatten(other))


@pytest.fixture(scope="module")
def trained(patches):
    x_aux, y_aux, x_held, y_held, info = patches
    victim, variables = lenet()
    tree, spec, metrics = inverter.train(victim, variables, x_aux, y_aux, x_held, y_held, normalize=info.normalize,
                                         hidden=256, epochs=30, batch_size=32, learning_rate=1e-3, eval_every=5,
                                         log=lambda _: None)
    return tree, spec, metrics


def test_lti_beats_the_mean_image_on_held_out_auxiliary_images(trained):
    _, spec, metrics = trained
    # measured: held-out MSE 0.014 against the mean image's 0.058 (19.0 dB vs 13.6 dB) after 40 epochs
    assert metrics["heldout_mse"] < 0.5 * metrics["baseline_mse"]
    assert metrics["heldout_psnr"] > metrics["baseline_psnr"] + 3.0
    assert metrics["best_epoch"] > 0 and metrics["updates_per_s"] > 0 and not spec.hashed


@pytest.mark.slow
def test_training_resumes_after_a_kill_to_the_same_network(patches, tmp_path):
    x_aux, y_aux, x_held, y_held, info = patches
    victim, variables = lenet()
    settings = dict(normalize=info.normalize, hidden=32, epochs=3, batch_size=32, learning_rate=1e-3, eval_every=1)

    def run(progress, log=lambda _: None, **changed):
        return inverter.train(victim, variables, x_aux, y_aux, x_held, y_held, **{**settings, **changed},
                              progress=str(progress), log=log)

    whole = run(tmp_path / "whole")

    def kill_after_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    progress = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(progress, log=kill_after_epoch_2)
    lines = []
    resumed = run(progress, log=lines.append)
    assert any("resumed after epoch 2 of 3" in line for line in lines)
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["3/3"]
    for a, b in zip(jax.tree.leaves(whole[0]), jax.tree.leaves(resumed[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert resumed[2]["best_epoch"] == whole[2]["best_epoch"]
    with pytest.raises(ValueError, match="another LTI training"):
        run(progress, learning_rate=2e-3)


def test_matched_mse_is_the_best_ordering():
    target = jnp.stack([jnp.zeros((2, 2, 1)), jnp.ones((2, 2, 1)), jnp.full((2, 2, 1), 0.5)])[None]
    swapped = target[:, jnp.array([2, 0, 1])]
    assert float(inverter.matched_mse(swapped, target)[0]) == 0.0
    assert float(jnp.mean((swapped - target) ** 2)) > 0.1


def test_checkpoint_round_trip(trained, patches, tmp_path):
    tree, spec, metrics = trained
    inverter.save(tmp_path / "inv", tree, spec, {"heldout_mse": metrics["heldout_mse"]})
    loaded = inverter.load(tmp_path / "inv")
    assert loaded.spec == spec and loaded.metadata["heldout_mse"] == metrics["heldout_mse"]
    assert loaded.metadata["inverter"]["out_shape"] == [1, SIDE, SIDE, 3]
    victim, variables = lenet()
    x_aux, y_aux, *_ = patches
    update = threat_models.client_update(victim, variables, x_aux[:1], y_aux[:1], key=jax.random.key(0)).grads
    module = inverter.InverterMLP(spec.hidden, spec.out_shape)
    direct = module.apply({"params": tree["mlp"]}, inverter.features(update, tree, spec.num_features)[None])[0]
    np.testing.assert_allclose(loaded.images01(update), direct, atol=1e-6)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
        inverter.load(tmp_path / "missing")
    checkpoints.save(tmp_path / "other", {"a": np.zeros(2)}, {"gan": {}})
    with pytest.raises(checkpoints.CheckpointError, match="not an inverter checkpoint"):
        inverter.load(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match"):
        inverter.save(tmp_path / "bad", tree, spec._replace(hidden=8), {})


# -- the CLI and the runner on the tiny real-image fixture -----------------------------------------

@pytest.fixture(scope="module")
def cli_inverter(folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("inverter")
    assert cli.main(["train-inverter", "--config", str(CONFIGS / "inverter_cifar10.py:smoke"), "--workdir", str(workdir),
                     *folder, "--set=aux.count=8", "--set=heldout_count=4", "--set=hidden=16", "--set=num_bins=500",
                     "--set=batch_size=4", "--set=defense.noise_std=0.001"]) == 0
    return workdir / "inverter"


@pytest.mark.slow
def test_train_inverter_writes_a_checkpoint_with_its_metadata(cli_inverter):
    loaded = inverter.load(cli_inverter)
    meta = loaded.metadata
    assert meta["victim"]["name"] == "convnet_tiny" and meta["victim_identity"] == {"name": "convnet_tiny", "init": "flax",
                                                                                     "init_seed": 0}
    assert meta["defense"]["noise_std"] == 0.001 and meta["defense"] == {**defenses.DEFENSE_DEFAULTS, "noise_std": 0.001}
    assert meta["threat"]["kind"] == "fedsgd" and meta["client_batch_size"] == 1 and meta["batch_size"] == 4
    assert (meta["aux_count"], meta["heldout_count"], meta["pool_count"]) == (8, 4, 12)
    assert all(np.isfinite(meta[k]) for k in ("heldout_mse", "heldout_psnr", "baseline_mse"))
    victim = make_victim("convnet_tiny", 3, (32, 32, 3))   # the fixture has 3 classes
    num_params = sum(leaf.size for leaf in jax.tree.leaves(victim.init(jax.random.key(0))["params"]))
    assert loaded.spec.hashed and loaded.spec.num_features == 500 and loaded.tree["bins"].shape == (num_params,)
    assert meta["inverter"]["out_shape"] == [1, 32, 32, 3]
    assert not (cli_inverter.parent / "inverter_progress").exists()   # the resume state goes once it is saved


def lti_study_args(folder, workdir, checkpoint, *extra):
    return ["study", "--config", str(CONFIGS / "study_lti_cifar10.py:smoke"), "--workdir", str(workdir), *folder,
            "--set=data.split=test", "--set=targets.starts=[0, 2]", "--set=victim.name=convnet_tiny",
            f"--set=inverter.checkpoint={checkpoint}", "--set=engine.chunk_size=2", "--set=metrics.lpips_net=None",
            "--set=engine.strategy=vmap_patches", "--set=engine.attacks_per_device=2", *extra]


@pytest.mark.slow
def test_lti_alone_and_refined_through_the_runner(folder, cli_inverter, tmp_path):
    assert cli.main(lti_study_args(folder, tmp_path / "alone", cli_inverter)) == 0
    alone = [json.loads(line) for line in open(tmp_path / "alone" / "results.jsonl")]
    assert [r["attack"] for r in alone] == ["lti:lti"] * 2
    assert all(r["status"] == "ok" and r["steps"] == 0 and r["iterations"] == 0 for r in alone)
    assert alone[0]["inverter"]["checkpoint"] == str(cli_inverter) and alone[0]["inverter"]["aux_count"] == 8
    assert alone[0]["inverter"]["defense"]["noise_std"] == 0.001
    # LTI alone's reconstruction is the network's output for the attack's target update
    config = configs.load_config(str(CONFIGS / "study_lti_cifar10.py:smoke"))
    for assignment in lti_study_args(folder, "", cli_inverter)[5:]:
        configs.apply_override(config, assignment.removeprefix("--set="))
    s = study.Study(config, str(tmp_path / "alone"))
    grads = jax.tree.map(lambda g: g[0], s.inputs([0]).target_grads)
    expected = np.clip(np.asarray(inverter.load(cli_inverter).images01(grads)), 0, 1)
    with np.load(tmp_path / "alone" / "reconstructions" / "wave_00000.npz") as saved:
        np.testing.assert_allclose(saved["images01"][list(saved["ids"]).index(0)], expected, atol=1e-5)

    assert cli.main(lti_study_args(folder, tmp_path / "refined", cli_inverter, "--set=attack.iterations=4")) == 0
    refined = [json.loads(line) for line in open(tmp_path / "refined" / "results.jsonl")]
    assert [r["attack"] for r in refined] == ["lti:lti+ig"] * 2
    assert all(r["status"] == "ok" and r["steps"] == 4 and r["inverter"]["checkpoint"] == str(cli_inverter)
               for r in refined)
    assert [r["target_indices"] for r in refined] == [r["target_indices"] for r in alone]


def test_inverter_errors_are_one_clear_line(folder, cli_inverter, tmp_path, capsys):
    assert cli.main(lti_study_args(folder, tmp_path / "a", tmp_path / "nothing")) == 2
    err = capsys.readouterr().err   # the config schema's check, before any data is read
    assert "config field inverter.checkpoint" in err and "no such file or folder" in err and err.count("\n") == 1
    assert cli.main(lti_study_args(folder, tmp_path / "b", cli_inverter, "--set=victim.init_seed=1")) == 2
    assert "was trained on the victim" in capsys.readouterr().err
    assert cli.main(lti_study_args(folder, tmp_path / "c", cli_inverter, "--set=targets.batch_size=2")) == 2
    assert "client batches of shape (1, 32, 32, 3)" in capsys.readouterr().err
    assert cli.main(lti_study_args(folder, tmp_path / "d", cli_inverter, "--set=attack.init=magic",
                                   "--set=attack.iterations=2")) == 2
    assert "attack.init" in capsys.readouterr().err
    again = ["train-inverter", "--config", str(CONFIGS / "inverter_cifar10.py:smoke"), "--workdir",
             str(cli_inverter.parent), *folder]
    assert cli.main(again) != 0   # a second training into the same work directory: refused before it trains
    out, err = capsys.readouterr()
    assert "already exists" in err and err.count("\n") == 1 and "training the LTI inverter" not in out
