"""Every shipped attack and study config is one study shape: it loads, assembles (dataset, victim,
prior, optimization, threat model, defenses) and computes its attacks' shared updates. Running each
kind of attack is tested elsewhere (pixels: test_cli; L-BFGS: test_dlg; GAN: test_gan; DIP: test_dip)."""

import glob
import os

import pytest

from gipip_jax import assembly, configs, study

CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(assembly.REPO_ROOT, "experiments", "configs", "*.py"))
                 if os.path.basename(p) not in ("ae_cifar10.py", "gan_cifar10.py", "victim_cifar10.py", "utility_cifar10.py",
                                               "inverter_cifar10.py", "study_lti_cifar10.py"))   # LTI: test_inverter


def test_every_attack_config_is_found():
    assert {"gipip_cifar10.py", "ig_cifar10.py", "ig_paper_cifar10.py", "gradinversion_cifar10.py", "dlg_cifar10.py",
            "idlg_cifar10.py", "study_cifar10.py", "study_gan_cifar10.py", "study_dip_cifar10.py"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_assembles(name, fixtures_dir, tmp_path):
    config = configs.load_config(os.path.join(assembly.REPO_ROOT, "experiments", "configs", f"{name}:smoke"))
    for assignment in (f"data.name=folder:{fixtures_dir / 'tiny_folder'}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.split=test", "targets.starts=[0]", "metrics.lpips_net=None"):
        configs.apply_override(config, assignment)
    config.targets.batch_size = min(config.targets.batch_size, 3)   # the fixture has 3 classes
    s = study.Study(study.sequential(config), str(tmp_path))   # as `gipip-jax attack` runs it
    inputs = s.inputs([0])
    assert len(s.attacks) >= 1 and inputs.labels.shape[:2] == (1, config.targets.batch_size)
    assert set(inputs.terms) == set(s.term_names)
