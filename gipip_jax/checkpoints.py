"""Checkpoints: an orbax pytree plus JSON metadata in one directory.

Layout of a checkpoint directory ``PATH``::

    PATH/tree/           orbax StandardCheckpointer checkpoint of the pytree
    PATH/metadata.json   JSON metadata

A save writes both into a hidden sibling temp directory and renames it to
``PATH`` only when complete, so an interrupted save never leaves anything at
``PATH`` that restores. On top: victims (variables + what rebuilds the
:class:`~gipip_jax.victims.Victim`) and the AE prior (params), each checked on
load against a fresh init of its module.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import sys
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gipip_jax.autoencoder import Autoencoder, init_autoencoder_params, make_autoencoder
from gipip_jax.victims import Victim, make_victim

TREE_DIR = "tree"
METADATA_FILE = "metadata.json"
VICTIM_KEY = "victim"
AUTOENCODER_KEY = "autoencoder"
VICTIM_HINT = "train one with `gipip-jax train-victim --config CONFIG --workdir WORKDIR`"
AUTOENCODER_HINT = "train one with `gipip-jax train-ae --config CONFIG --workdir WORKDIR`"
_MAX_LISTED_MISMATCHES = 5
_MAX_CAUSE_CHARS = 300


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing, unreadable, corrupt, or not for the expected model.
    Its message is one line that names the checkpoint's path."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """A checkpoint that exists but cannot be used: unreadable, corrupt, or not for the expected model."""


def _cause(error: BaseException) -> str:
    """One short line for what went wrong: the innermost error's first line, without the
    TensorStore spec dumps orbax adds (dozens of lines)."""
    seen = [error]
    while len(seen) < 20:
        inner = seen[-1].__cause__ or (None if seen[-1].__suppress_context__ else seen[-1].__context__)
        if inner is None or inner in seen:
            break
        seen.append(inner)
    for candidate in reversed(seen):   # the innermost error with a message
        text = str(candidate).strip()
        if text:
            break
    else:
        candidate, text = error, ""
    text = text.splitlines()[0] if text else ""
    for noise in (" [tensorstore_spec=", "See full TensorStore details"):
        text = text.split(noise)[0].rstrip()
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[:_MAX_CAUSE_CHARS - 3] + "..."
    return f"{type(candidate).__name__}: {text}" if text else type(candidate).__name__


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serializable")


def _sibling(path: pathlib.Path, purpose: str) -> pathlib.Path:
    """A fresh hidden path beside ``path``, e.g. ``.NAME.partial-1f0c...``."""
    return path.with_name(f".{path.name}.{purpose}-{uuid.uuid4().hex}")


def save(path, tree: Any, metadata: dict, *, overwrite: bool = False) -> pathlib.Path:
    """Saves pytree ``tree`` (nested dicts of arrays) and JSON ``metadata`` at directory ``path``.

    Numpy/jax scalars and arrays in metadata become JSON numbers/lists. An
    existing ``path`` raises FileExistsError unless ``overwrite``; it is
    replaced only after the new checkpoint is complete. Returns the absolute path.
    """
    path = pathlib.Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {path} already exists; pass overwrite=True to replace it")
    metadata_text = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(path, "partial")
    staging.mkdir()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / TREE_DIR, tree)
        (staging / METADATA_FILE).write_text(metadata_text)
        if path.exists():
            retired = _sibling(path, "old")
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def restore(path, *, hint: str | None = None) -> tuple[Any, dict]:
    """Loads ``(tree, metadata)`` saved by :func:`save`; tree: nested dicts of numpy/jax arrays.

    Raises CheckpointError when ``path`` is missing (its message adds ``hint``,
    e.g. the command that creates one), CorruptCheckpointError (a CheckpointError and a
    ValueError) when it is unreadable/corrupt; either message is one line naming ``path``.
    """
    path = pathlib.Path(path).absolute()
    advice = f"; {hint}" if hint else ""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}{advice}")
    _quiet_orbax_leftovers()
    try:
        metadata = json.loads((path / METADATA_FILE).read_text())
        if not isinstance(metadata, dict):
            raise ValueError(f"{METADATA_FILE} holds a {type(metadata).__name__}, not an object")
        with ocp.StandardCheckpointer() as checkpointer:
            # Onto this process's first device: the saved sharding names the saving process's device
            # (cpu:0), which other processes of a distributed run do not have.
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                                  checkpointer.metadata(path / TREE_DIR).item_metadata.tree)
            tree = checkpointer.restore(path / TREE_DIR, target)
    except Exception as error:  # orbax and json raise many types; all mean "cannot use this"
        raise CorruptCheckpointError(
            f"checkpoint at {path} is corrupt or unreadable ({_cause(error)}); delete it and create it again{advice}"
        ) from error
    return tree, metadata


def _quiet_orbax_leftovers() -> None:
    """When a restore fails, orbax closes its event loop while TensorStore reads are still in
    flight: each read that completes then (or later) reports RuntimeError('Event loop is closed'),
    and each read coroutine whose error nobody awaited reports it when collected (with a
    TensorStore spec, ~60 lines), to sys.unraisablehook, i.e. as tracebacks on stderr after the
    error was handled. This drops exactly those (Python ignores them anyway) and passes anything
    else on to the hook that was there before."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_orbax_leftovers", False):
        return

    def hook(unraisable):
        error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        orbax_coroutine = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
        if not (closed_loop or orbax_coroutine):
            previous(unraisable)

    hook.quiets_orbax_leftovers = True
    sys.unraisablehook = hook


def tree_mismatches(tree: Any, expected: Any) -> list[str]:
    """Human-readable differences in leaf paths, shapes and dtypes between two pytrees
    (``expected`` may hold ``jax.ShapeDtypeStruct`` leaves); empty when they match."""

    def leaves(t):
        return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(t)}

    found, wanted = leaves(tree), leaves(expected)
    problems = [f"missing {name}" for name in wanted if name not in found]
    problems += [f"unexpected {name}" for name in found if name not in wanted]
    for name in wanted.keys() & found.keys():
        have = (tuple(np.shape(found[name])), np.dtype(found[name].dtype))
        want = (tuple(wanted[name].shape), np.dtype(wanted[name].dtype))
        if have != want:
            problems.append(f"{name} is {have[1]}{list(have[0])}, expected {want[1]}{list(want[0])}")
    return sorted(problems)


def _require_match(tree, expected, what: str, error_type: type[Exception], where: str) -> None:
    problems = tree_mismatches(tree, expected)
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED_MISMATCHES])
        more = f" (and {len(problems) - _MAX_LISTED_MISMATCHES} more)" if len(problems) > _MAX_LISTED_MISMATCHES else ""
        raise error_type(f"{where} does not match {what}: {shown}{more}")


def _victim_description(victim: Victim) -> str:
    return f"victim {victim.name!r} for images {victim.image_shape} with {victim.num_classes} classes"


def save_victim(path, victim: Victim, variables: dict, metadata: dict, *, overwrite: bool = False) -> pathlib.Path:
    """Saves victim ``variables``; ``metadata['victim']`` records name, num_classes, image_shape."""
    expected = jax.eval_shape(victim.init, jax.random.key(0))
    _require_match(variables, expected, _victim_description(victim), ValueError, "the variables to save")
    spec = {"name": victim.name, "num_classes": victim.num_classes, "image_shape": list(victim.image_shape)}
    return save(path, variables, {**metadata, VICTIM_KEY: spec}, overwrite=overwrite)


def load_victim(path, *, hint: str = VICTIM_HINT) -> tuple[Victim, dict, dict]:
    """Loads ``(victim, variables, metadata)`` saved by :func:`save_victim`.

    Raises CheckpointError when missing, corrupt, not a victim checkpoint, or when
    the variables do not match the rebuilt victim's structure and shapes.
    """
    variables, metadata = restore(path, hint=hint)
    spec = metadata.get(VICTIM_KEY)
    if not isinstance(spec, dict) or not {"name", "num_classes", "image_shape"} <= spec.keys():
        raise CorruptCheckpointError(f"{path} is not a victim checkpoint (its metadata has no complete {VICTIM_KEY!r} entry)")
    try:
        victim = make_victim(spec["name"], spec["num_classes"], spec["image_shape"], conv="native")
    except ValueError as error:
        raise CorruptCheckpointError(f"{path} describes a victim that cannot be built: {error}") from error
    expected = jax.eval_shape(victim.init, jax.random.key(0))
    _require_match(variables, expected, _victim_description(victim), CorruptCheckpointError, f"checkpoint {path}")
    return victim, variables, metadata


def _autoencoder_param_shapes(autoencoder: Autoencoder) -> dict:
    return jax.eval_shape(functools.partial(init_autoencoder_params, autoencoder), jax.random.key(0))


def save_autoencoder(path, params: dict, metadata: dict, *, overwrite: bool = False) -> pathlib.Path:
    """Saves AE ``params`` (the ``'params'`` collection); ``metadata['autoencoder']`` marks the kind."""
    autoencoder = make_autoencoder()
    expected = _autoencoder_param_shapes(autoencoder)
    _require_match(params, expected, "GI-PIP's autoencoder", ValueError, "the params to save")
    return save(path, params, {**metadata, AUTOENCODER_KEY: {"channels": autoencoder.channels}}, overwrite=overwrite)


def load_autoencoder(path, *, hint: str = AUTOENCODER_HINT) -> tuple[Autoencoder, dict, dict]:
    """Loads ``(autoencoder, params, metadata)``; reconstruct with ``autoencoder.apply({'params': params}, x01)``.

    Raises CheckpointError when missing, corrupt, not an AE checkpoint, or when
    the params do not match the autoencoder's structure and shapes.
    """
    params, metadata = restore(path, hint=hint)
    if not isinstance(metadata.get(AUTOENCODER_KEY), dict):
        raise CorruptCheckpointError(f"{path} is not an autoencoder checkpoint (its metadata has no {AUTOENCODER_KEY!r} entry)")
    autoencoder = make_autoencoder()
    expected = _autoencoder_param_shapes(autoencoder)
    _require_match(params, expected, "GI-PIP's autoencoder", CorruptCheckpointError, f"checkpoint {path}")
    return autoencoder, params, metadata
