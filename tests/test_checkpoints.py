import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from gipip_jax import checkpoints
from gipip_jax.autoencoder import Autoencoder, init_autoencoder_params, make_autoencoder
from gipip_jax.checkpoints import CheckpointError


@pytest.fixture(scope="module")
def victim_and_variables():
    from gipip_jax.victims import make_victim

    victim = make_victim("resnet_tiny", 7, (32, 32, 3), conv="native")  # as load_victim builds it
    return victim, victim.init(jax.random.key(0))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_generic_round_trip(tmp_path):
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.array([1, 2], np.int32)}
    metadata = {"epochs": np.int64(3), "acc": np.float32(0.5), "nested": {"list": [1, 2]}}
    checkpoints.save(tmp_path / "ckpt", tree, metadata)
    restored, restored_metadata = checkpoints.restore(tmp_path / "ckpt")
    assert_trees_equal(restored, tree)
    assert restored_metadata == {"epochs": 3, "acc": 0.5, "nested": {"list": [1, 2]}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging leftovers


def test_victim_round_trip(tmp_path, victim_and_variables):
    victim, variables = victim_and_variables
    checkpoints.save_victim(tmp_path / "victim", victim, variables, {"epochs": 0, "seed": 0})
    loaded, restored, metadata = checkpoints.load_victim(tmp_path / "victim")
    assert loaded == victim
    assert_trees_equal(restored, variables)
    assert metadata == {"epochs": 0, "seed": 0,
                        "victim": {"name": "resnet_tiny", "num_classes": 7, "image_shape": [32, 32, 3]}}


def test_autoencoder_round_trip(tmp_path):
    params = init_autoencoder_params(make_autoencoder(), jax.random.key(0))
    checkpoints.save_autoencoder(tmp_path / "ae", params, {"recipe": "bce_adadelta", "as_offset": 0.01})
    module, restored, metadata = checkpoints.load_autoencoder(tmp_path / "ae")
    assert isinstance(module, Autoencoder)
    assert_trees_equal(restored, params)
    assert metadata["recipe"] == "bce_adadelta" and metadata["as_offset"] == 0.01
    x = np.full((1, 32, 32, 3), 0.5, np.float32)
    np.testing.assert_array_equal(module.apply({"params": restored}, x), make_autoencoder().apply({"params": params}, x))


def test_missing_checkpoint_names_the_path_and_the_hint(tmp_path):
    with pytest.raises(CheckpointError, match="train-ae") as caught:
        checkpoints.load_autoencoder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(CheckpointError, match="make it first"):
        checkpoints.restore(tmp_path / "nowhere", hint="make it first")


def test_corrupt_metadata_is_reported(tmp_path, victim_and_variables):
    victim, variables = victim_and_variables
    path = checkpoints.save_victim(tmp_path / "victim", victim, variables, {})
    (path / checkpoints.METADATA_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        checkpoints.load_victim(path)


def test_corrupt_tree_is_reported(tmp_path):
    path = checkpoints.save(tmp_path / "ckpt", {"w": np.ones(3, np.float32)}, {})
    for file in (path / checkpoints.TREE_DIR).rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        checkpoints.restore(path)


SHIPPED_AE = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "checkpoints" / "ae_cifar10_aux5"


def truncated_copy(source, target, where="d"):
    """A copy of checkpoint `source` whose array data files (in folders named `where`) are cut to 10 bytes."""
    shutil.copytree(source, target)
    data_files = [f for f in (target / checkpoints.TREE_DIR).rglob("*") if f.is_file() and f.parent.name == "d"
                  and (where == "d" or where in f.parts)]
    assert data_files
    for file in data_files:
        file.write_bytes(file.read_bytes()[:10])
    return target


# "ocdbt.process_0": only the array chunks are cut, which orbax reports with a 61-line TensorStore spec.
@pytest.mark.parametrize("where", ["d", "ocdbt.process_0"])
def test_corrupt_array_data_is_one_line_naming_the_path(tmp_path, where):
    path = truncated_copy(SHIPPED_AE, tmp_path / "ae", where)
    with pytest.raises(CheckpointError) as caught:
        checkpoints.load_autoencoder(path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, checkpoints.CorruptCheckpointError)
    assert "\n" not in message and len(message) < 600 and "TensorStore" not in message, message
    assert str(path) in message and "corrupt or unreadable" in message and "train-ae" in message


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(tmp_path / "ckpt", {"w": np.ones(3, np.float32)}, {})
    assert list(tmp_path.iterdir()) == []


def test_existing_checkpoint_is_protected_unless_overwrite(tmp_path):
    path = tmp_path / "ckpt"
    checkpoints.save(path, {"w": np.zeros(2, np.float32)}, {"version": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoints.save(path, {"w": np.ones(2, np.float32)}, {"version": 2})
    assert checkpoints.restore(path)[1] == {"version": 1}
    checkpoints.save(path, {"w": np.ones(2, np.float32)}, {"version": 2}, overwrite=True)
    tree, metadata = checkpoints.restore(path)
    np.testing.assert_array_equal(tree["w"], np.ones(2, np.float32))
    assert metadata == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_structure_mismatch_is_reported_on_load(tmp_path, victim_and_variables):
    victim, variables = victim_and_variables
    path = checkpoints.save_victim(tmp_path / "victim", victim, variables, {})
    metadata = json.loads((path / checkpoints.METADATA_FILE).read_text())
    metadata["victim"]["num_classes"] = 5
    (path / checkpoints.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"Dense_0.*\[32, 7\], expected float32\[32, 5\]"):
        checkpoints.load_victim(path)
    with pytest.raises(CheckpointError, match="not an autoencoder checkpoint"):
        checkpoints.load_autoencoder(path)


def test_mismatched_trees_are_refused_on_save(tmp_path, victim_and_variables):
    victim, variables = victim_and_variables
    with pytest.raises(ValueError, match="missing"):
        checkpoints.save_victim(tmp_path / "victim", victim, {"params": variables["params"]}, {})
    params = init_autoencoder_params(make_autoencoder(), jax.random.key(0))
    params = {**params, "extra": {"kernel": np.zeros(3, np.float32)}}
    with pytest.raises(ValueError, match="unexpected"):
        checkpoints.save_autoencoder(tmp_path / "ae", params, {})
    assert not (tmp_path / "victim").exists() and not (tmp_path / "ae").exists()
