"""GAN prior: DCGAN shapes and gradients, training + checkpoint, the two-phase GIAS optimizer, the
study end to end with attack.parameterization=gan, and its error paths."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import checkpoints, cli, gan, parameterizations
from gipip_jax.attack import step_decay_schedule

CONFIGS = pathlib.Path(__file__).parent.parent / "experiments" / "configs"
LATENT = 8


@pytest.mark.parametrize("side, stages", [(32, 3), (64, 4)])
def test_generator_and_discriminator_shapes(side, stages):
    generator, discriminator = gan.make_gan((side, side, 3), width=4)
    tree = gan.init_gan(generator, discriminator, jax.random.key(0), LATENT)
    images = generator.apply(tree["generator"], jax.random.normal(jax.random.key(1), (2, LATENT)))
    assert images.shape == (2, side, side, 3) and float(jnp.max(jnp.abs(images))) <= 1.0
    assert discriminator.apply({"params": tree["discriminator"]}, images).shape == (2,)
    convs = [k for k in tree["generator"]["params"] if k.startswith("ConvTranspose")]
    assert len(convs) == stages


def test_non_square_or_odd_sizes_are_one_clear_error():
    with pytest.raises(ValueError, match="square"):
        gan.make_gan((32, 16, 3))
    with pytest.raises(ValueError, match="4 \\* 2\\^k"):
        gan.make_gan((48, 48, 3))


def test_gan_parameterization_renders_normalized_images_with_gradients_to_latent_and_weights():
    generator, discriminator = gan.make_gan((8, 8, 3), width=4)
    variables = gan.init_gan(generator, discriminator, jax.random.key(0), LATENT)["generator"]
    mean, std = jnp.array([0.5, 0.4, 0.3]), jnp.array([0.2, 0.25, 0.3])
    p = parameterizations.gan(generator, variables, LATENT, lambda x01: (x01 - mean) / std)
    params = p.init(jax.random.key(3), (2, 8, 8, 3))
    assert params["latent"].shape == (2, LATENT)
    x = p.render(params)
    x01 = x * std + mean
    assert x.shape == (2, 8, 8, 3) and float(x01.min()) >= 0.0 and float(x01.max()) <= 1.0
    grads = jax.grad(lambda q: jnp.sum(p.render(q) ** 2))(params)
    assert float(jnp.abs(grads["latent"]).sum()) > 0
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["generator"]))


def test_gias_optimizer_moves_the_latent_then_only_the_generator():
    params = {"latent": jnp.ones((1, 3)), "generator": {"w": jnp.ones((2, 2))}}
    tx = parameterizations.make_gan_optimizer(0.1, 1e-2, 3, 2, schedule=step_decay_schedule)
    state, moved = tx.init(params), []
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(6):
        updates, state = tx.update(grads, state, params)
        moved.append((bool(jnp.any(updates["latent"] != 0)), bool(jnp.any(updates["generator"]["w"] != 0))))
    assert moved == [(True, False)] * 3 + [(False, True)] * 2 + [(False, False)]
    # Phase 2's Adam starts fresh: its first step is a full-size step of its own learning rate.
    tx2 = parameterizations.make_gan_optimizer(0.1, 1e-2, 3, 16, schedule=step_decay_schedule)
    state2 = tx2.init(params)
    for step in range(4):
        updates, state2 = tx2.update(grads, state2, params)
    np.testing.assert_allclose(updates["generator"]["w"], -1e-2, rtol=1e-5)


def test_training_save_and_load_round_trip(tmp_path):
    images = np.random.default_rng(0).uniform(size=(8, 8, 8, 3)).astype(np.float32)
    tree, metrics = gan.train_gan(images, epochs=2, latent_dim=LATENT, width=4, batch_size=4, log=lambda _: None)
    assert metrics["steps"] == 4 and np.isfinite(metrics["d_loss"]) and np.isfinite(metrics["g_loss"])
    gan.save_gan(tmp_path / "g", tree, {"note": 1}, image_shape=(8, 8, 3), width=4, latent_dim=LATENT)
    generator, variables, meta = gan.load_gan(tmp_path / "g")
    assert meta["gan"] == {"latent_dim": LATENT, "width": 4, "image_shape": [8, 8, 3]} and meta["note"] == 1
    z = jnp.ones((1, LATENT))
    np.testing.assert_allclose(generator.apply(variables, z), generator.apply(tree["generator"], z), atol=1e-6)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
        gan.load_gan(tmp_path / "missing")
    checkpoints.save(tmp_path / "other", {"a": np.zeros(2)}, {"autoencoder": {}})
    with pytest.raises(checkpoints.CheckpointError, match="not a GAN checkpoint"):
        gan.load_gan(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match"):
        gan.save_gan(tmp_path / "bad", tree, {}, image_shape=(8, 8, 3), width=8, latent_dim=LATENT)


# -- CLI end to end on the tiny real-image fixture ------------------------------------------------

@pytest.fixture(scope="module")
def trained_gan(folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gan")
    assert cli.main(["train-gan", "--config", str(CONFIGS / "gan_cifar10.py:smoke"), "--workdir", str(workdir), *folder,
                     "--set=aux.count=8", "--set=heldout_count=0", "--set=batch_size=4", "--set=width=4",
                     f"--set=latent_dim={LATENT}"]) == 0
    meta = json.load(open(workdir / "gan" / "metadata.json"))
    assert meta["aux_count"] == 8 and meta["gan"]["image_shape"] == [32, 32, 3]
    assert (workdir / "gan_samples.png").stat().st_size > 0
    return workdir / "gan"


def study_args(folder, workdir, *extra):
    return ["study", "--config", str(CONFIGS / "study_gan_cifar10.py:smoke"), "--workdir", str(workdir), *folder,
            "--set=data.split=test", "--set=targets.starts=[0, 2]", "--set=victim.name=convnet_tiny",
            "--set=attack.iterations=4", "--set=engine.chunk_size=2", "--set=metrics.lpips_net=None", *extra]


@pytest.mark.slow
def test_gan_prior_study_end_to_end(folder, trained_gan, tmp_path):
    assert cli.main(study_args(folder, tmp_path, f"--set=gan.checkpoint={trained_gan}")) == 0
    records = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert [r["attack"] for r in records] == ["gan_prior:gan"] * 2
    assert all(r["status"] == "ok" and r["steps"] == 4 and r["parameterization"] == "gan" for r in records)
    assert records[0]["gan_prior"]["aux_count"] == 8 and records[0]["gan_prior"]["latent_iterations"] == 2
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_gan_errors_are_one_clear_line(folder, trained_gan, tmp_path, capsys):
    assert cli.main(study_args(folder, tmp_path / "a", f"--set=gan.checkpoint={tmp_path / 'nothing'}")) == 2
    err = capsys.readouterr().err   # the config schema's check, before any data is read
    assert "config field gan.checkpoint" in err and "no such file or folder" in err and err.count("\n") == 1
    assert cli.main(study_args(folder, tmp_path / "b", "--set=attack.parameterization=vae")) == 2
    assert "config field attack.parameterization = 'vae'" in capsys.readouterr().err
    assert cli.main(study_args(folder, tmp_path / "c", f"--set=gan.checkpoint={trained_gan}",
                               "--set=data.image_size=64")) == 2
    assert "makes images of shape (32, 32, 3)" in capsys.readouterr().err
