"""gipip_jax.data: loading image folders and archives, caching, index helpers, normalization."""
import importlib.resources
import io
import os
import pathlib
import random
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import data

CIFAR10_MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
CIFAR10_STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
CLASSES = ("airplane", "cat", "ship")


@pytest.fixture(scope="session")
def folder(fixtures_dir) -> pathlib.Path:
    return fixtures_dir / "tiny_folder"


def _tar(path: pathlib.Path, folder: pathlib.Path, top: str, renames=None) -> pathlib.Path:
    """Packs ``folder`` as ``top/...`` into the gzip'd tar ``path`` (split folders renamed by ``renames``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split in sorted(p.name for p in folder.iterdir()):
            tar.add(folder / split, arcname=f"{top}/{(renames or {}).get(split, split)}")
    return path


def _entries(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (cache / "arrays").iterdir() if not p.name.startswith("."))


def test_folder_load(folder, tmp_path):
    s = data.load(f"folder:{folder}", "train", cache_dir=tmp_path)
    assert s.images.shape == (12, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.shape == (12,) and s.labels.dtype == np.int32
    assert np.bincount(s.labels).tolist() == [4, 4, 4]
    assert s.images.min() < 30 and s.images.max() > 220  # real photos, full range
    info = s.info
    assert info.image_shape == (32, 32, 3) and info.num_classes == 3 and info.class_names == CLASSES
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    x01, y = s.take([3, 0, 3])
    assert x01.shape == (3, 32, 32, 3) and x01.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x01.min() and x01.max() <= 1.0
    np.testing.assert_array_equal(x01[0], s.images[3] / np.float32(255))
    np.testing.assert_array_equal(y, s.labels[[3, 0, 3]])
    with pytest.raises(ValueError, match="1-D"):
        s.take(np.zeros((2, 2), int))


def test_folder_order_is_the_pinned_tfds_recipe(folder, tmp_path):
    """Sorted class folders, sorted files, then random.Random(split).shuffle, decoded by TF's libjpeg."""
    import tensorflow as tf

    s = data.load(f"folder:{folder}", "train", cache_dir=tmp_path)
    examples = [(str(p), label) for label, c in enumerate(CLASSES) for p in sorted((folder / "train" / c).iterdir())]
    random.Random("train").shuffle(examples)
    assert s.labels.tolist() == [label for _, label in examples]
    expected = np.stack([tf.io.decode_jpeg(tf.io.read_file(p), channels=3).numpy() for p, _ in examples])
    np.testing.assert_array_equal(s.images, expected)


def test_folder_cache_hit_and_determinism(folder, tmp_path, capsys):
    first = data.load(f"folder:{folder}", "test", cache_dir=tmp_path / "a")
    assert "decoding" in capsys.readouterr().out
    (entry,) = _entries(tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a" / "arrays" / entry)) == ["images.npy", "labels.npy", "meta.json"]
    again = data.load(f"folder:{folder}", "test", cache_dir=tmp_path / "a")
    assert capsys.readouterr().out == ""  # served from the .npy cache
    fresh = data.load(f"folder:{folder}", "test", cache_dir=tmp_path / "b")  # decoded again
    for other in (again, fresh):
        np.testing.assert_array_equal(other.images, first.images)
        np.testing.assert_array_equal(other.labels, first.labels)
        assert other.info == first.info
    assert first.images.shape == (6, 32, 32, 3) and np.bincount(first.labels).tolist() == [2, 2, 2]


def test_image_size(folder, tmp_path):
    native = data.load(f"folder:{folder}", "train", cache_dir=tmp_path)
    small = data.load(f"folder:{folder}", "train", cache_dir=tmp_path, image_size=16)
    assert small.images.shape == (12, 16, 16, 3) and small.info.image_shape == (16, 16, 3)
    box = native.images.astype(np.float64).reshape(12, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    assert np.abs(small.images - box).max() <= 0.5 + 1e-9  # area: the 2x2 mean, rounded
    big = data.load(f"folder:{folder}", "train", cache_dir=tmp_path, image_size=40)
    assert big.images.shape == (12, 40, 40, 3) and big.images.dtype == np.uint8
    np.testing.assert_array_equal(big.labels, native.labels)
    assert len(_entries(tmp_path)) == 3
    with pytest.raises(data.DataError, match="image_size"):
        data.load(f"folder:{folder}", "train", cache_dir=tmp_path, image_size=0)


def test_folder_errors(folder, tmp_path):
    with pytest.raises(data.DataError, match="no split 'val'.*'test', 'train'"):
        data.load(f"folder:{folder}", "val", cache_dir=tmp_path)
    with pytest.raises(data.DataError, match="not a directory"):
        data.load(f"folder:{tmp_path / 'nowhere'}", "train", cache_dir=tmp_path)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(data.DataError, match="no images"):
        data.load(f"folder:{tmp_path / 'empty'}", "train", cache_dir=tmp_path)


def test_fake_cifar10_archive(folder, tmp_path, capsys):
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    _tar(data_dir / "cifar10.tar.gz", folder, "cifar10")
    s = data.load("cifar10", "train", data_dir=str(data_dir), cache_dir=str(cache))
    out = capsys.readouterr().out
    assert out.count("unpacking") == 1 and out.count("decoding") == 1
    assert s.info.name == "cifar10" and s.info.class_names == CLASSES
    assert s.info.mean == CIFAR10_MEAN and s.info.std == CIFAR10_STD
    plain = data.load(f"folder:{folder}", "train", cache_dir=cache)  # the same files in the same order
    np.testing.assert_array_equal(s.images, plain.images)
    np.testing.assert_array_equal(s.labels, plain.labels)
    capsys.readouterr()
    test = data.load("cifar10", "test", data_dir=str(data_dir), cache_dir=str(cache))
    assert test.images.shape == (6, 32, 32, 3)
    assert "unpacking" not in capsys.readouterr().out  # unpacked once
    (unpacked,) = (cache / "unpacked").iterdir()
    assert sorted(p.name for p in (unpacked / "cifar10").iterdir()) == ["test", "train"]
    with pytest.raises(data.DataError, match="no split 'val'"):
        data.load("cifar10", "val", data_dir=str(data_dir), cache_dir=str(cache))


def test_data_dir_from_environment(folder, tmp_path, monkeypatch):
    _tar(tmp_path / "data" / "cifar10.tar.gz", folder, "cifar10")
    monkeypatch.setenv("GIPIP_JAX_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GIPIP_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))  # ignore any real prepared copy
    s = data.load("cifar10", "test")
    assert s.images.shape == (6, 32, 32, 3) and len(_entries(tmp_path / "cache")) == 1


def _fake_cifar10_download(root: pathlib.Path) -> dict:
    """The extracted cifar-10-binary.tar.gz layout with random images: {file: (labels, NHWC images)}."""
    rng = np.random.default_rng(0)
    raw = root / "cifar-10-batches-bin"
    raw.mkdir(parents=True)
    (raw / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    records = {}
    for name, n in [*((f"data_batch_{i}.bin", 2) for i in range(1, 6)), ("test_batch.bin", 3)]:
        labels, images = rng.integers(0, 10, n, dtype=np.uint8), rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        (raw / name).write_bytes(b"".join(bytes([y]) + x.tobytes() for y, x in zip(labels, images)))
        records[name] = (labels, images.transpose(0, 2, 3, 1))
    return records


def _assert_same_examples(s, labels, images):
    """Same (image, label) pairs, in whatever order tfds stored them."""
    assert len(s.labels) == len(labels)
    for x, y in zip(s.images, s.labels):
        (match,) = [k for k in range(len(images)) if np.array_equal(images[k], x)]
        assert labels[match] == y


def test_tfds_catalog_download_then_prepared_copy_wins(folder, tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    try:  # tfds's download_and_prepare imports it; the standard library has the same API
        import importlib_resources  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)
    records = _fake_cifar10_download(tmp_path / "download")
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                        lambda self, url: str(tmp_path / "download"))
    tfds_dir = tmp_path / "tfds"
    test = data.load("cifar10", "test", data_dir=str(tfds_dir), cache_dir=str(tmp_path / "c"), download=True)
    assert "downloading and preparing cifar10" in capsys.readouterr().out
    _assert_same_examples(test, *records["test_batch.bin"])
    assert test.info.class_names[-1] == "truck" and test.info.mean == CIFAR10_MEAN
    _tar(tfds_dir / "cifar10.tar.gz", folder, "cifar10")  # a prepared copy is preferred to the archive
    train = data.load("cifar10", "train", data_dir=str(tfds_dir), cache_dir=str(tmp_path / "c2"))
    labels, images = (np.concatenate(a) for a in zip(*(records[f"data_batch_{i}.bin"] for i in range(1, 6))))
    _assert_same_examples(train, labels, images)
    assert not (tmp_path / "c2" / "unpacked").exists()


def test_fake_tiny_imagenet_test_means_val(folder, tmp_path):
    _tar(tmp_path / "tiny-imagenet-200-subset.tar.gz", folder, "tiny-imagenet-200", renames={"test": "val"})
    val = data.load("tiny_imagenet", "val", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    test = data.load("tiny_imagenet", "test", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(test.images, val.images)
    assert val.images.shape == (6, 32, 32, 3) and val.info.mean == (0.485, 0.456, 0.406)


def test_unsafe_archive_member(tmp_path):
    archive = tmp_path / "data" / "cifar10.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar10/../../evil.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(data.DataError, match="unsafe member"):
        data.load("cifar10", "train", data_dir=str(archive.parent), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "cache" / "evil.jpg").exists()
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []


@pytest.mark.parametrize("kind", ["not gzip", "truncated"])
def test_corrupt_archive(folder, tmp_path, kind):
    archive = tmp_path / "data" / "cifar10.tar.gz"
    if kind == "not gzip":
        archive.parent.mkdir()
        archive.write_bytes(b"this is not a tar.gz file")
    else:
        whole = _tar(archive, folder, "cifar10").read_bytes()
        archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load("cifar10", "train", data_dir=str(archive.parent), cache_dir=str(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == []  # no half tree left behind


def test_missing_archive_and_unknown_names(tmp_path):
    with pytest.raises(data.DataError, match=f"no cifar10.tar.gz.*{tmp_path}.*GIPIP_JAX_DATA"):
        data.load("cifar10", "train", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(data.DataError, match="no tiny-imagenet-200-subset.tar.gz"):
        data.load("tiny_imagenet", "train", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(data.DataError, match="no tfds-prepared cifar100.*download=True"):
        data.load("cifar100", "train", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(data.DataError, match="unknown dataset 'mnist_nope'.*cifar10.*tiny_imagenet.*folder:PATH"):
        data.load("mnist_nope", "train", cache_dir=str(tmp_path / "c"))
    assert {"cifar10", "tiny_imagenet", "cifar100", "imagenet_resized/32x32",
            "downsampled_imagenet/64x64"} <= set(data.DATASETS)
    assert issubclass(data.DataError, ValueError)


def test_unique_label_batch():
    labels = np.array([3, 3, 1, 0, 1, 2, 3, 0, 2])
    np.testing.assert_array_equal(data.unique_label_batch(labels, 0, 3), [0, 2, 3])
    np.testing.assert_array_equal(data.unique_label_batch(labels, 1, 4), [1, 2, 3, 5])
    np.testing.assert_array_equal(data.unique_label_batch(labels, 4, 4), [4, 5, 6, 7])
    out = data.unique_label_batch(labels, 2, 4)
    assert len(set(labels[out])) == 4
    np.testing.assert_array_equal(out, data.unique_label_batch(labels, 2, 4))
    with pytest.raises(ValueError, match="only 3 distinct labels"):
        data.unique_label_batch(labels, 6, 4)
    with pytest.raises(ValueError, match="only 4 distinct"):
        data.unique_label_batch(labels, 0, 5)
    with pytest.raises(ValueError, match="start"):
        data.unique_label_batch(labels, 9, 1)


def test_auxiliary_indices():
    exclude = np.arange(0, 100, 3)
    aux = data.auxiliary_indices(100, exclude=exclude, count=20, seed=1)
    assert len(aux) == 20 and len(set(aux.tolist())) == 20
    assert np.all(np.diff(aux) > 0) and not set(aux.tolist()) & set(exclude.tolist())
    np.testing.assert_array_equal(aux, data.auxiliary_indices(100, exclude=exclude, count=20, seed=1))
    assert not np.array_equal(aux, data.auxiliary_indices(100, exclude=exclude, count=20, seed=2))
    assert len(data.auxiliary_indices(50_000, fraction=0.1)) == 5_000
    assert len(data.auxiliary_indices(100, fraction=0.29)) == 29
    np.testing.assert_array_equal(data.auxiliary_indices(10, exclude=[0, 1], count=8), np.arange(2, 10))
    # A pinned draw: the subset must not change across machines or numpy versions.
    assert data.auxiliary_indices(20, count=5, seed=0).tolist() == PINNED_DRAW
    for kwargs, match in [(dict(), "exactly one"), (dict(fraction=0.1, count=3), "exactly one"),
                          (dict(exclude=exclude, count=70), "only 66"), (dict(fraction=1.5), "fraction"),
                          (dict(exclude=[100], count=1), "outside")]:
        with pytest.raises(ValueError, match=match):
            data.auxiliary_indices(100, **kwargs)


PINNED_DRAW = [2, 3, 11, 13, 15]


def test_auxiliary_split_is_one_draw_for_every_prior_and_caps_all_at_all_but_the_heldout():
    aux, heldout = data.auxiliary_split(1000, fraction=0.05, seed=0, heldout_count=100)
    np.testing.assert_array_equal(aux, data.auxiliary_indices(1000, fraction=0.05, seed=0))   # the shipped AE's draw
    np.testing.assert_array_equal(heldout, data.auxiliary_indices(1000, exclude=aux, count=100, seed=1))
    everything, rest = data.auxiliary_split(1000, fraction=1.0, seed=0, heldout_count=100)
    assert len(everything) == 900 and len(rest) == 100 and not set(everything.tolist()) & set(rest.tolist())
    # "100 %" is the draw `experiment.train_prior` made before this function (count = all but the held-out
    # images, seed 0), so the AE of experiments/results/aux_amount_cpu's 100 % arm keeps its images.
    np.testing.assert_array_equal(everything, data.auxiliary_indices(1000, count=900, seed=0))
    np.testing.assert_array_equal(data.auxiliary_split(1000, fraction=0.95, heldout_count=100)[0], everything)
    assert len(data.auxiliary_split(1000, fraction=1.0)[0]) == 1000
    # A count is never capped: one that leaves no room for the held-out images is an error.
    with pytest.raises(ValueError, match="heldout_count is 100, but 50 of the 1000 images are left"):
        data.auxiliary_split(1000, count=950, heldout_count=100)


def test_normalize_roundtrip_and_bounds():
    info = data.DatasetInfo("cifar10", (32, 32, 3), 10, CIFAR10_MEAN, CIFAR10_STD, tuple("abcdefghij"))
    x01 = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    x = info.normalize(x01)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], (x01[..., 0] - CIFAR10_MEAN[0]) / CIFAR10_STD[0], rtol=1e-6)
    np.testing.assert_allclose(info.denormalize(x), x01, atol=1e-6)
    xj = jax.jit(info.normalize)(jnp.asarray(x01))  # traceable
    np.testing.assert_allclose(np.asarray(xj), x, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(info.denormalize)(xj)), x01, atol=1e-6)
    lo, hi = info.bounds()
    assert lo.shape == hi.shape == (3,)
    np.testing.assert_allclose(lo, -np.array(CIFAR10_MEAN) / CIFAR10_STD, rtol=1e-6)
    np.testing.assert_allclose(hi, (1 - np.array(CIFAR10_MEAN)) / CIFAR10_STD, rtol=1e-6)
    np.testing.assert_allclose(info.denormalize(np.stack([lo, hi])), [[0, 0, 0], [1, 1, 1]], atol=1e-6)
    hash(info)  # frozen: usable as a static jit argument


def _shared_archive() -> pathlib.Path | None:
    for d in (os.environ.get("GIPIP_JAX_DATA"), pathlib.Path(data.__file__).parents[1] / ".." / "shared" / "data"):
        if d and (pathlib.Path(d) / "cifar10.tar.gz").is_file():
            return pathlib.Path(d) / "cifar10.tar.gz"
    return None


@pytest.mark.skipif(_shared_archive() is None, reason="the shared CIFAR-10 archive is not here")
def test_real_cifar10_test_split():
    """The real archive, through the default cache (slow only the first time on a machine)."""
    s = data.load("cifar10", "test")
    assert s.images.shape == (10_000, 32, 32, 3) and s.images.dtype == np.uint8
    assert np.bincount(s.labels).tolist() == [1000] * 10
    assert s.info.class_names[:3] == ("airplane", "automobile", "bird")
    x01 = s.images[:2000].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(x01.mean(0), CIFAR10_MEAN, atol=0.01)  # JPEG shifts colours a little
    np.testing.assert_allclose(x01.std(0), CIFAR10_STD, atol=0.01)
    assert sorted(s.labels[data.unique_label_batch(s.labels, 0, 10)].tolist()) == list(range(10))



def test_unique_label_batches_are_disjoint_with_distinct_labels():
    labels = np.array([0, 0, 1, 2, 1, 3, 0, 2, 3, 1, 2, 0])
    b = data.unique_label_batches(labels, [0, 1, 2], 3)
    # the old scan-from-start draw gave overlapping batches ([0, 2, 3] and [1, 2, 3]); these never overlap
    np.testing.assert_array_equal(b[0], [0, 2, 3])
    np.testing.assert_array_equal(b[1], [1, 4, 5])
    np.testing.assert_array_equal(b[2], [6, 7, 8])
    everything = data.unique_label_batches(labels, range(4), 3)
    flat = np.concatenate(everything)
    assert len(np.unique(flat)) == len(flat)
    assert all(len(np.unique(labels[x])) == 3 for x in everything)
    # bs 1: batch k is image k; excluded images are skipped
    np.testing.assert_array_equal(np.concatenate(data.unique_label_batches(labels, [0, 5], 1)), [0, 5])
    np.testing.assert_array_equal(np.concatenate(data.unique_label_batches(labels, [0, 1], 1, exclude=[0, 2])), [1, 3])
    with pytest.raises(ValueError, match="disjoint batches"):
        data.unique_label_batches(labels, [4], 3)
    with pytest.raises(ValueError, match="distinct labels is impossible"):
        data.unique_label_batches(labels, [0], 5)
