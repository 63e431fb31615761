"""Deterministic plans: the engine's plan rule (no timing), W/plan.json, the plan in every record,
engine.plan replaying another run's plan bit for bit, and published fingerprints left unchanged."""

import glob
import json
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gipip_jax import attack, cli, engine, parameterizations, study

SHAPE = (1, 4, 4, 3)
BOUNDS = (np.full(3, -5.0), np.full(3, 5.0))
ROOT = pathlib.Path(__file__).parent.parent
CONFIG = str(ROOT / "experiments" / "configs" / "study_cifar10.py")


def toy_engine(parameterization=None):
    def build(conv):
        def objective(x, target, labels, terms):
            loss = jnp.mean((x - target) ** 2)
            return loss, {"matching": loss}
        return objective

    return engine.Engine(build, attack.make_optimizer(0.05, 10, signed=False), BOUNDS, lambda x: x, shape=SHAPE,
                         chunk_size=5, mesh=engine.make_mesh(jax.devices()[:1]), parameterization=parameterization)


def toy_inputs(n=2):
    keys = np.stack([jax.random.key_data(jax.random.key(s)) for s in range(n)])
    return engine.AttackInputs(np.zeros((n, *SHAPE), np.float32), np.zeros((n, 1), np.int32),
                               engine.per_attack_terms([{}] * n), keys)


@pytest.fixture
def no_timing(monkeypatch):
    """Any timing probe fails the test: a plan must not depend on how fast the machine is now."""
    def measure(*args, **kwargs):
        raise AssertionError("choose_plan timed a program")
    monkeypatch.setattr(engine.Engine, "measure", measure)


def test_auto_plan_is_a_rule_of_the_config_and_devices(no_timing):
    eng, example = toy_engine(), toy_inputs()
    assert eng.choose_plan(example, 10, log=lambda _: None)[0] == engine.Plan("vmap_patches", engine.CPU_WIDTH, 1)
    assert eng.choose_plan(example, 3, log=lambda _: None)[0] == engine.Plan("vmap_patches", 3, 1)   # what it fills
    assert eng.choose_plan(example, 10, strategy="unroll", log=lambda _: None)[0] == engine.Plan("unroll", 1, 1)
    plan, table = eng.choose_plan(example, 10, strategy="vmap", attacks_per_device=3, log=lambda _: None)
    assert plan == engine.Plan("vmap", 3, 1) and table == []
    with pytest.raises(ValueError, match="unknown engine strategy"):
        eng.choose_plan(example, 10, strategy="pmap")


def test_parameterizations_with_weights_unroll_on_cpu(no_timing):
    dip_like = parameterizations.pixels(BOUNDS)._replace(name="dip")
    plan, _ = toy_engine(dip_like).choose_plan(toy_inputs(), 10, log=lambda _: None)
    assert plan == engine.Plan("unroll", 1, 1)


def test_memory_rule_shrinks_the_width_by_the_device_size_not_what_is_free(no_timing, monkeypatch):
    eng, example = toy_engine(), toy_inputs()
    full = eng.program(engine.Plan("vmap_patches", 4, 1), example).bytes_per_device
    one = eng.program(engine.Plan("vmap_patches", 1, 1), example).bytes_per_device
    assert full > one > 0
    limit = (one + full) / 2   # bytes a wave may use: width 4 does not fit, width 1 does
    monkeypatch.setattr(engine, "_memory_limit_per_device", lambda mesh: limit / engine.MEMORY_FRACTION)
    plan, table = eng.choose_plan(example, 10, log=lambda _: None)
    assert 1 <= plan.attacks_per_device < 4 and table[0]["attacks_per_device"] == 4
    assert table[-1]["attacks_per_device"] == plan.attacks_per_device and table[-1]["bytes_per_device"] <= limit
    monkeypatch.setattr(engine, "_free_bytes_per_device", lambda mesh: 1e15)   # other load: the same plan
    assert eng.choose_plan(example, 10, log=lambda _: None) == (plan, table)
    monkeypatch.setattr(engine, "_free_bytes_per_device", lambda mesh: 1024.0)   # busy: an error, not another plan
    with pytest.raises(ValueError, match="attacks_per_device"):
        eng.choose_plan(example, 10, log=lambda _: None)


def test_machine_names_the_backend_and_what_the_cpu_computes_with():
    described = engine.machine()
    assert described.split()[:2] == ["cpu", platform.machine()]   # the tests run on the CPU
    assert set(described.split()[2:]) <= set(engine.CPU_FEATURES) and engine.machine() is described


def test_read_plan_refuses_another_device_count_and_non_plans(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"strategy": "vmap", "attacks_per_device": 2, "num_devices": 8}))
    assert engine.read_plan(str(path), 8)[0] == engine.Plan("vmap", 2, 8)
    with pytest.raises(ValueError, match=r"plan for 8 device\(s\); this run has 1"):
        engine.read_plan(str(path), 1)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a readable plan.json"):
        engine.read_plan(str(path), 1)


def overrides(fixtures_dir, cache, *engine_fields):
    return [f"--set=data.name=folder:{fixtures_dir / 'tiny_folder'}", f"--set=data.cache_dir={cache}",
            "--set=data.split=test", "--set=targets.starts=[0, 2]", "--set=victim.name=convnet_tiny",
            "--set=grid.as_weight=[0.0]", "--set=grid.noise_std=[0.0, 1e-2]", "--set=attack.iterations=10",
            "--set=engine.chunk_size=5", "--set=engine.checkpoint_every=5", "--set=metrics.lpips_net=None",
            *(f"--set=engine.{field}" for field in engine_fields)]


def records(workdir):
    return sorted((json.loads(line) for line in open(workdir / "results.jsonl")), key=lambda r: r["attack_id"])


@pytest.mark.slow
def test_auto_study_records_its_plan_and_a_replay_gives_the_same_numbers(fixtures_dir, tmp_path, capsys, no_timing):
    first, second = tmp_path / "first", tmp_path / "second"
    args = overrides(fixtures_dir, tmp_path / "cache", "strategy=auto", "attacks_per_device=0")
    assert cli.main(["study", "--config", CONFIG + ":smoke", "--workdir", str(first), *args]) == 0
    width = min(engine.CPU_WIDTH, 4)   # 2 targets x 2 noise levels
    assert f"plan: vmap_patches x{width}/device on 1 device(s)" in capsys.readouterr().out
    saved = json.load(open(first / "plan.json"))
    assert (saved["strategy"], saved["attacks_per_device"], saved["num_devices"]) == ("vmap_patches", width, 1)
    assert saved["backend"] == "cpu" and saved["device_kind"] == jax.devices()[0].device_kind
    expected = {"strategy": "vmap_patches", "attacks_per_device": width, "num_devices": 1}
    assert [r["plan"] for r in records(first)] == [expected] * 4
    assert saved["machine"] == engine.machine() and {r["machine"] for r in records(first)} == {engine.machine()}
    # a config that alone would run unroll x1 replays the first run's plan and computes the same numbers;
    # the plan file says it was made on another machine, and the run says what that means
    elsewhere = tmp_path / "plan_elsewhere.json"
    elsewhere.write_text(json.dumps(dict(saved, machine="cpu x86_64 avx2")))
    args = overrides(fixtures_dir, tmp_path / "cache", "strategy=unroll", "attacks_per_device=1", f"plan={elsewhere}")
    assert cli.main(["study", "--config", CONFIG + ":smoke", "--workdir", str(second), *args]) == 0
    assert (f"{elsewhere} was made on cpu x86_64 avx2; this is {engine.machine()}: the same plan, but the records "
            "will not be bit-identical to ones made there") in capsys.readouterr().out
    replayed = records(second)
    assert [r["plan"] for r in replayed] == [expected] * 4
    for a, b in zip(records(first), replayed):
        assert a["status"] == b["status"] == "ok" and a["fingerprint"] != b["fingerprint"]
        assert (a["loss"], a["psnr"], a["terms"]) == (b["loss"], b["psnr"], b["terms"])   # bit for bit


def test_a_plan_for_other_devices_is_one_error_line(fixtures_dir, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"strategy": "vmap", "attacks_per_device": 1, "num_devices": 8}))
    workdir = tmp_path / "run"
    args = overrides(fixtures_dir, tmp_path / "cache", f"plan={plan}")
    assert cli.main(["study", "--config", CONFIG + ":smoke", "--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gipip-jax: error:") and "8 device(s); this run has 1" in err[0]
    assert not (workdir / "results.jsonl").exists() and not (workdir / "plan.json").exists()


def published_records():
    for path in sorted(glob.glob(str(ROOT / "experiments" / "results" / "**" / "*.jsonl"), recursive=True)):
        with open(path) as f:
            record = json.loads(f.readline())
        if "engine" in record.get("config", {}):
            yield path, record


def test_engine_plan_leaves_published_fingerprints_unchanged():
    published = list(published_records())
    assert len(published) >= 10
    for path, record in published:
        config = ml_collections.ConfigDict(record["config"])
        assert study.fingerprint(config) == record["fingerprint"], path
        config.engine.plan = ""   # the new field at its default
        assert study.fingerprint(config) == record["fingerprint"], path
        config.engine.plan = "runs/other/plan.json"
        assert study.fingerprint(config) != record["fingerprint"], path
        config.engine.plan = ""
        start = config.attack.get("init", "random")
        if start == "random":
            config.attack.init = "random"   # attack.init, added later too, at its default
            assert study.fingerprint(config) == record["fingerprint"], path
        config.attack.init = "random" if start == "flat" else "flat"
        assert study.fingerprint(config) != record["fingerprint"], path


def test_shipped_study_configs_carry_the_plan_field():
    from gipip_jax import configs

    for name in ("study_cifar10.py", "gipip_cifar10.py", "dlg_cifar10.py"):
        config = configs.load_config(os.path.join(ROOT, "experiments", "configs", name))
        assert config.engine.plan == ""
