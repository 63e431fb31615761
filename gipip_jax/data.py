"""Image datasets for the attacks: uint8 arrays in memory, per-dataset normalization.

    s = load("cifar10", "test")        # ImageSet
    s.images                           # uint8 (N, H, W, C), values 0..255
    s.labels                           # int32 (N,), 0..num_classes-1 in sorted class-folder order
    x01, y = s.take([0, 5, 9])         # float32 (B, H, W, C) in [0, 1], int32 (B,)
    x = s.info.normalize(x01)          # (x01 - mean) / std per channel; np or jnp (jit-traceable)
    lo, hi = s.info.bounds()           # (C,) each: the normalized values of 0 and 1

Names (``DATASETS``, plus ``folder:PATH``):
- ``cifar10``: a tfds-prepared catalog copy if one exists (exact original pixels), else the
  offline archive ``cifar10.tar.gz`` (JPEG, so pixels differ slightly) read with ``tfds.ImageFolder``.
- ``tiny_imagenet``: the archive ``tiny-imagenet-200-subset.tar.gz`` (64x64; class names are
  WNIDs). Splits ``train`` and ``val``; ``test`` means ``val`` (the official test split has no labels).
- tfds catalog names (``cifar100``, ``imagenet_resized/32x32``, ``downsampled_imagenet/64x64``, ...)
  when prepared; ``download=True`` lets tfds download and prepare one that is neither prepared nor
  here as an archive. For the ImageNet ones ``test``/``val`` mean ``validation``;
  ``downsampled_imagenet`` has no labels: all labels are 0, one class ``unlabeled``.
- ``folder:PATH``: any ``PATH/SPLIT/CLASS/IMAGE`` folder (.jpg/.jpeg/.png), normalized with
  mean = std = 0.5 as no statistics are known.
Images are decoded as RGB (C = 3). ``image_size=S`` resizes to S x S: area averaging when
shrinking (64 -> 32 is an exact 2x2 mean), bilinear when enlarging, rounded back to uint8.

Archives are searched in ``data_dir``, else ``$GIPIP_JAX_DATA``, ``<repo>/../shared/data`` and
``./../shared/data``; tfds-prepared copies in the same places and ``$TFDS_DATA_DIR`` (default
``~/tensorflow_datasets``) - only in ``data_dir`` when it is given. An archive is unpacked once into
the cache dir (``cache_dir``, else ``$GIPIP_JAX_CACHE``, else ``~/.cache/gipip_jax``); each decoded
split is then kept there as ``.npy`` files keyed by source, split and size, so TensorFlow is only
imported on the first load. cifar10 train on the 2-core CPU dev machine: first load 19-60 s (unpacking
the 60,000 files 9-40 s, depending on disk load; TF import 5 s; decoding 6 s), cached load 0.03 s
(0.2 s in a fresh process, import included). ``download=True`` needs the ``importlib_resources`` package.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.parse
import zlib
from typing import Callable, NamedTuple

import numpy as np

_CIFAR10 = ((0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
            (0.24703224003314972, 0.24348513782024384, 0.26158785820007324))  # inverting-gradients constants
_CIFAR100 = ((0.5071598291397095, 0.4866936206817627, 0.44120192527770996),
             (0.2673342823982239, 0.2564384639263153, 0.2761504650115967))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_GENERIC = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_IMAGENET_CATALOG = (*(f"imagenet_resized/{s}x{s}" for s in (8, 16, 32, 64)),
                     *(f"downsampled_imagenet/{s}x{s}" for s in (32, 64)))
_STATS = {"cifar10": _CIFAR10, "tiny_imagenet": _IMAGENET, "cifar100": _CIFAR100,
          **{name: _IMAGENET for name in _IMAGENET_CATALOG}}
DATASETS = tuple(_STATS)
_CATALOG = frozenset(DATASETS) - {"tiny_imagenet"}  # names tfds knows
_ARCHIVES = {"cifar10": ("cifar10.tar.gz", "cifar10"),  # name -> (archive file, image-folder root inside)
             "tiny_imagenet": ("tiny-imagenet-200-subset.tar.gz", "tiny-imagenet-200")}
_SPLIT_ALIASES = {"tiny_imagenet": {"test": "val", "validation": "val"},
                  **{name: {"test": "validation", "val": "validation"} for name in _IMAGENET_CATALOG}}
_FOLDER = "folder:"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what tfds.ImageFolder reads
_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


class DataError(ValueError):
    """A dataset cannot be served: unknown name, missing or corrupt archive, bad split, ..."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: image shape (H, W, C), classes and per-channel normalization of [0, 1] images."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def normalize(self, x01):
        """[0, 1] images (..., H, W, C), np or jnp -> (x01 - mean) / std."""
        return (x01 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def denormalize(self, x):
        """Inverse of :meth:`normalize`."""
        return x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each float32 (C,): the normalized values of 0 and 1."""
        channels = len(self.mean)
        return self.normalize(np.zeros(channels, np.float32)), self.normalize(np.ones(channels, np.float32))


class ImageSet(NamedTuple):
    """A decoded split: images uint8 (N, H, W, C), labels int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo

    def take(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (B, H, W, C) in [0, 1] and labels int32 (B,) at ``indices`` (B,)."""
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
        return self.images[indices].astype(np.float32) / 255.0, self.labels[indices].astype(np.int32)


def load(name: str, split: str, *, data_dir: str | None = None, cache_dir: str | None = None,
         image_size: int | None = None, download: bool = False) -> ImageSet:
    """Loads split ``split`` of dataset ``name`` (see the module docstring); DataError if it cannot."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise DataError(f"image_size must be a positive int or None, got {image_size!r}")
    split = _SPLIT_ALIASES.get(name, {}).get(split, split)
    cache = pathlib.Path(cache_dir or os.environ.get("GIPIP_JAX_CACHE") or "~/.cache/gipip_jax").expanduser()
    source, make_builder = _source(name, split, data_dir, cache, download)
    entry = cache / "arrays" / "-".join([source, _quote(split), str(image_size or "native")])
    if not (entry / "meta.json").is_file():
        builder = make_builder()
        print(f"gipip_jax.data: decoding {name} {split} with tf.data (cached afterwards in {entry})", flush=True)
        images, labels = _decode(builder, split, image_size, f"{name} {split}")
        features = builder.info.features
        class_names = features["label"].names if "label" in features else ["unlabeled"]
        _write_entry(entry, images, labels, class_names)
    images = np.load(entry / "images.npy")
    labels = np.load(entry / "labels.npy")
    class_names = tuple(json.loads((entry / "meta.json").read_text())["class_names"])
    mean, std = _STATS.get(name, _GENERIC)
    info = DatasetInfo(name, tuple(int(d) for d in images.shape[1:]), len(class_names), mean, std, class_names)
    return ImageSet(images, labels, info)


def unique_label_batch(labels: np.ndarray, start: int, batch_size: int) -> np.ndarray:
    """Indices (batch_size,), ascending: scanning start, start+1, ..., the first index of each new label."""
    labels = np.asarray(labels)
    if not 0 <= start < len(labels) or batch_size < 1:
        raise ValueError(f"need 0 <= start < {len(labels)} and batch_size >= 1, got start={start}, "
                         f"batch_size={batch_size}")
    _, first = np.unique(labels[start:], return_index=True)
    if len(first) < batch_size:
        raise ValueError(f"a batch of {batch_size} distinct labels is impossible: labels[{start}:] holds only "
                         f"{len(first)} distinct labels")
    return np.sort(first)[:batch_size] + start


def unique_label_batches(labels: np.ndarray, numbers, batch_size: int, *, exclude=()) -> list[np.ndarray]:
    """Batches `numbers` (e.g. targets.starts) of one partition of the split into disjoint batches of
    `batch_size` distinct labels, each (batch_size,) ascending.

    The partition scans the indices in order (skipping `exclude`, e.g. a prior's auxiliary images):
    an image joins the open batch unless its label is already there, then it waits for the next
    batch, which takes waiting images first. Batch numbers therefore never share an image; with
    batch_size 1 and nothing excluded, batch k is image k.
    """
    labels = np.asarray(labels)
    numbers = [int(n) for n in numbers]
    if batch_size < 1 or any(n < 0 for n in numbers):
        raise ValueError(f"need batch_size >= 1 and batch numbers >= 0, got {batch_size} and {numbers}")
    if len(np.unique(labels)) < batch_size:
        raise ValueError(f"a batch of {batch_size} distinct labels is impossible: the split has "
                         f"{len(np.unique(labels))} labels")
    skip = set(np.asarray(exclude, np.int64).reshape(-1).tolist())
    stream = (i for i in range(len(labels)) if i not in skip)
    waiting, batches = [], []
    needed = max(numbers, default=-1) + 1
    while len(batches) < needed:
        batch, seen = [], set()
        for i in list(waiting):
            if len(batch) < batch_size and labels[i] not in seen:
                batch.append(i), seen.add(labels[i]), waiting.remove(i)
        while len(batch) < batch_size:
            i = next(stream, None)
            if i is None:
                raise ValueError(f"the split holds only {len(batches)} disjoint batches of {batch_size} distinct "
                                 f"labels; asked for batch number {needed - 1}")
            if labels[i] in seen:
                waiting.append(i)
            else:
                batch.append(i), seen.add(labels[i])
        batches.append(np.sort(np.asarray(batch, np.int64)))
    return [batches[n] for n in numbers]


def check_auxiliary_request(fraction: float | None, count: int | None) -> None:
    """ValueError unless exactly one of `fraction` (in (0, 1]) and `count` (>= 0) is given: cheap, so
    commands call it before decoding any data."""
    if (fraction is None) == (count is None):
        raise ValueError(f"give exactly one of aux.fraction and aux.count, got fraction={fraction}, count={count}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"aux.fraction must be in (0, 1], got {fraction}")
    if count is not None and count < 0:
        raise ValueError(f"aux.count must be >= 0, got {count}")


def auxiliary_indices(num_examples: int, *, exclude=(), fraction: float | None = None,
                      count: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted seeded random subset of range(num_examples) minus ``exclude``: ``count`` indices, or
    ``round(fraction * num_examples)``; exactly one of the two."""
    check_auxiliary_request(fraction, count)
    if fraction is not None:
        count = round(fraction * num_examples)
    exclude = np.asarray(exclude, np.int64).reshape(-1)
    if exclude.size and (exclude.min() < 0 or exclude.max() >= num_examples):
        raise ValueError(f"exclude holds indices outside [0, {num_examples})")
    available = np.setdiff1d(np.arange(num_examples), exclude)
    if not 0 <= count <= len(available):
        raise ValueError(f"asked for {count} indices but only {len(available)} of {num_examples} are not excluded")
    # Ranked by raw PCG64 output, whose stream numpy keeps stable across versions (Generator methods may change).
    keys = np.random.PCG64(seed).random_raw(len(available))
    return np.sort(available[np.argsort(keys, kind="stable")[:count]])


def auxiliary_split(num_examples: int, *, fraction: float | None = None, count: int | None = None, seed: int = 0,
                    heldout_count: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(aux, heldout): sorted, disjoint index arrays of range(num_examples). aux is `auxiliary_indices`
    (seed); a fraction that would leave fewer than `heldout_count` images out is capped at all but
    those, so fraction 1.0 means "all of the split but the held-out images". heldout is
    `heldout_count` of the rest (seed + 1). Every learned prior (the AE, the GAN, the LTI inverter)
    draws its images here: the same request gives each the same images."""
    check_auxiliary_request(fraction, count)
    if fraction is not None:
        count = min(round(fraction * num_examples), max(num_examples - heldout_count, 0))
    aux = auxiliary_indices(num_examples, count=count, seed=seed)
    if not 0 <= heldout_count <= num_examples - len(aux):
        raise ValueError(f"heldout_count is {heldout_count}, but {num_examples - len(aux)} of the {num_examples} images "
                         f"are left beside the {len(aux)} auxiliary ones; lower heldout_count or aux.count")
    return aux, auxiliary_indices(num_examples, exclude=aux, count=heldout_count, seed=seed + 1)


def _source(name: str, split: str, data_dir, cache: pathlib.Path, download: bool) -> tuple[str, Callable]:
    """(cache key of the source, () -> tfds builder serving it); DataError when there is none."""
    if name.startswith(_FOLDER):
        root = pathlib.Path(name[len(_FOLDER):]).expanduser().resolve()
        listing = _folder_listing(root, split)
        return f"folder-{_quote(root.name)}-{_digest(str(root), *listing)}", lambda: _image_folder(root)
    if name not in _STATS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or folder:PATH")
    dirs = ([pathlib.Path(data_dir).expanduser()] if data_dir else
            [pathlib.Path(d) for d in (os.environ.get("GIPIP_JAX_DATA"),
                                       _REPO_ROOT / ".." / "shared" / "data", "./../shared/data") if d])
    tfds_dirs = dirs if data_dir else [*dirs, pathlib.Path(os.environ.get("TFDS_DATA_DIR")
                                                            or "~/tensorflow_datasets").expanduser()]
    prepared = _prepared(name, tfds_dirs) if name in _CATALOG else None
    archive_name, top = _ARCHIVES.get(name, (None, None))
    archive = next((d / archive_name for d in dirs if archive_name and (d / archive_name).is_file()), None)
    if download and name in _CATALOG and not (prepared or archive):
        prepared = _download(name, tfds_dirs[-1])
    if prepared:
        tfds_dir, versions = prepared
        return f"{_quote(name)}-tfds-{_digest(*versions)}", lambda: _catalog_builder(name, tfds_dir)
    if archive:
        stat = archive.stat()
        key = f"{name}-{_digest(archive.name, stat.st_size, stat.st_mtime_ns)}"

        def unpacked_builder():
            root = _unpacked(archive, cache / "unpacked" / key) / top
            if not root.is_dir():
                raise DataError(f"{archive} holds no {top}/ folder; is it the right archive?")
            _folder_listing(root, split)
            return _image_folder(root)

        return key, unpacked_builder
    searched = ", ".join(str(d) for d in (tfds_dirs if name in _CATALOG else dirs))
    fix = (f"put {archive_name} into one of them, set GIPIP_JAX_DATA or pass data_dir" if archive_name else
           f"prepare it (`tfds build {name} --data_dir DIR`) or pass download=True")
    what = f"no {archive_name} and no tfds-prepared {name}" if archive_name else f"no tfds-prepared {name}"
    raise DataError(f"{what} in {searched}; {fix}")


def _prepared(name: str, tfds_dirs) -> tuple[pathlib.Path, list[str]] | None:
    """(tfds data dir, its version folders with mtimes) of the first prepared copy of ``name``."""
    for d in tfds_dirs:
        infos = sorted(d.joinpath(*name.split("/")).glob("*/dataset_info.json"))
        if infos:
            return d, [f"{p.parent}:{p.stat().st_mtime_ns}" for p in infos]
    return None


def _catalog_builder(name: str, tfds_dir: pathlib.Path):
    builder = _tf()[1].builder(name, data_dir=str(tfds_dir))
    if not builder.is_prepared():
        raise DataError(f"{tfds_dir} holds {name}, but not the version {builder.version} this tfds reads; "
                        f"re-prepare it (`tfds build {name} --data_dir {tfds_dir}`)")
    return builder


def _download(name: str, tfds_dir: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    print(f"gipip_jax.data: downloading and preparing {name} into {tfds_dir} with tfds", flush=True)
    try:
        _tf()[1].builder(name, data_dir=str(tfds_dir)).download_and_prepare()
    except Exception as e:  # network, disk, manual-download datasets: all reported the same way
        raise DataError(f"tfds could not download and prepare {name} into {tfds_dir}: {e}") from e
    return _prepared(name, [tfds_dir])


def _folder_listing(root: pathlib.Path, split: str) -> list[str]:
    """Class folders of all splits, then 'CLASS/FILE:size:mtime' of each image of ROOT/SPLIT, sorted."""
    if not root.is_dir():
        raise DataError(f"{root} is not a directory (want ROOT/SPLIT/CLASS/IMAGE)")
    splits = sorted(p.name for p in root.iterdir() if p.is_dir())
    if split not in splits:
        raise DataError(f"{root} has no split {split!r}; it has {splits}")
    classes = sorted({c.name for s in splits for c in (root / s).iterdir() if c.is_dir()})
    images = [f"{c.name}/{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
              for c in sorted((root / split).iterdir()) if c.is_dir()
              for f in sorted(os.scandir(c), key=lambda f: f.name) if f.name.lower().endswith(_IMAGE_EXTENSIONS)]
    if not images:
        raise DataError(f"{root / split} holds no images ({'/'.join(_IMAGE_EXTENSIONS)} files in CLASS folders)")
    return classes + images


def _image_folder(root: pathlib.Path):
    # tfds.ImageFolder labels are indices into the sorted class folders of all splits; it orders a split by
    # sorted file path, then shuffles it with random.Random(split_name): the same order on every machine
    # (tests/test_data.py pins this recipe), classes mixed so that the first N images are a fair sample.
    return _tf()[1].ImageFolder(str(root))


def _unpacked(archive: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """Unpacks ``archive`` into ``target`` once, via a temporary folder renamed into place when complete."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"gipip_jax.data: unpacking {archive} into {target} (once)", flush=True)
    tmp = _temporary_folder(target.parent)
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                parts = pathlib.PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing to unpack unsafe member {member.name!r} "
                                    "(absolute path, '..' or not a plain file/folder)")
                path = tmp.joinpath(*parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        _publish(tmp, target)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{archive} is corrupt or truncated ({e}); replace it with a good copy") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _decode(builder, split: str, image_size: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """All of ``split`` as uint8 (N, H, W, 3) and int32 (N,), in the builder's deterministic order."""
    tf, tfds = _tf()
    read_config = tfds.ReadConfig(interleave_cycle_length=1)  # one shard at a time: stored order on any machine
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    except (ValueError, KeyError) as e:
        raise DataError(f"{what}: {e}") from e
    options = tf.data.Options()
    options.deterministic = True

    def resize(image):
        if image_size is None:
            return image
        size = (image_size, image_size)
        shrink = tf.shape(image)[0] * tf.shape(image)[1] > image_size * image_size
        out = tf.cond(shrink, lambda: tf.image.resize(image, size, "area"),
                      lambda: tf.image.resize(image, size, "bilinear"))
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    ds = ds.with_options(options).map(
        lambda ex: (resize(ex["image"]), ex.get("label", tf.constant(0, tf.int64)))).batch(1024)
    try:
        batches = list(tfds.as_numpy(ds))
    except tf.errors.OpError as e:
        raise DataError(f"decoding {what} failed: {e.message} (images of different sizes need image_size=)") from e
    if not batches:
        raise DataError(f"{what} holds no images")
    return (np.concatenate([b[0] for b in batches]).astype(np.uint8),
            np.concatenate([b[1] for b in batches]).astype(np.int32))


def _write_entry(entry: pathlib.Path, images: np.ndarray, labels: np.ndarray, class_names) -> None:
    """Writes a cache entry: a temporary folder renamed into place, so a killed write leaves no entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_folder(entry.parent)
    try:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps({"class_names": list(class_names)}))
        _publish(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temporary_folder(parent: pathlib.Path) -> pathlib.Path:
    tmp = pathlib.Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
    return tmp


def _publish(tmp: pathlib.Path, target: pathlib.Path) -> None:
    """Renames folder ``tmp`` to ``target``; when another process got there first, keeps theirs."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise


def _tf():
    """TensorFlow and tfds, imported quietly and hidden from GPUs so that JAX keeps the accelerator memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF 2.21 logs a oneDNN notice despite the level
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF's devices were already initialized elsewhere in this process
        pass
    return tf, tfds


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _digest(*parts) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:12]
