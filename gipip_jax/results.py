"""Result records and image grids written to a work directory.

`WORKDIR/results.jsonl` holds one JSON object per finished attack, appended with one write call
(and one fsync) per record or per batch of records (`append_records`: a study wave's), and is read
back to skip finished work. A kill during a write can leave a torn last line (no newline):
`read_records` ignores it, and the next append cuts it off first (that attack never finished, so a
resumed run redoes it), so every record starts on its own line. A write that fails (a full disk)
cuts off what it wrote before raising. `warn_duplicates` says, once per file, when a file holds an
attack twice (two runs that wrote one work directory before it had a lock); readers keep one.
`save_grid` writes rows of (B, H, W, C) [0, 1] images as one PNG (e.g. ground truth above
reconstructions).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Iterable

import numpy as np
from PIL import Image

_TAIL_BLOCK = 1 << 16


def records_path(study_dir: str) -> str:
    """Where a study directory keeps its records: STUDY_DIR/results.jsonl."""
    return os.path.join(study_dir, "results.jsonl")


class ResultsError(ValueError):
    """A results file that cannot be read: a line in the middle that is not a JSON object."""


def append_record(path: str, record: dict) -> None:
    """Appends `record` as one JSON line and flushes it to disk (first repairing a torn last line)."""
    append_records(path, [record])


def append_records(path: str, records: Iterable[dict]) -> None:
    """Appends `records` as JSON lines with one write and one flush to disk (first repairing a torn
    last line): a study appends a wave's records at once. A kill during the write keeps the whole
    lines written before it; the cut-off one is dropped by the next append."""
    line = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()
    if not line:
        return
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _repair_torn_tail(fd, path)
        start = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError:   # e.g. ENOSPC part-way: no part of these records stays
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _repair_torn_tail(fd: int, path: str) -> None:
    """Makes the file end in a newline: a last line without one is a write cut off by a kill, cut
    off here; one that is a whole record (only its newline lost) gets the newline instead."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = size
    while start > 0:   # find the byte after the last newline
        block_start = max(0, start - _TAIL_BLOCK)
        newline = os.pread(fd, start - block_start, block_start).rfind(b"\n")
        if newline >= 0:
            start = block_start + newline + 1
            break
        start = block_start
    fragment = os.pread(fd, size - start, start)
    if _record_of(fragment) is not None:
        os.write(fd, b"\n")
        return
    os.ftruncate(fd, start)
    os.fsync(fd)
    print(f"{path}: dropped a torn last line ({len(fragment)} bytes, a record cut off while written)",
          file=sys.stderr)


def _record_of(line: bytes | str) -> dict | None:
    """The record (a JSON object) a line holds, else None."""
    try:
        value = json.loads(line)
    except ValueError:   # JSONDecodeError, or bytes that are not UTF-8
        return None
    return value if isinstance(value, dict) else None


def read_records(path: str) -> list[dict]:
    """All records of a results file ([] if it does not exist); a torn last line (no newline) is
    ignored. Raises ResultsError for a line in the middle that is not a JSON object."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            record = _record_of(line)
            if record is not None:
                records.append(record)
            elif line.endswith(b"\n") and line.strip():
                raise ResultsError(f"{path}:{number} is not a JSON object; the results file is corrupt "
                                   f"(delete or fix that line)")
    return records


def ok_records(study_dir: str) -> list[dict]:
    """The records of study directory `study_dir` whose attack finished (status "ok"), in file order."""
    return [r for r in read_records(records_path(study_dir)) if r.get("status") == "ok"]


def by_target(records: Iterable[dict], keep=None) -> dict[tuple, dict]:
    """{target indices: record} of the records with status "ok" that `keep(record)` accepts (all of them
    by default); a target attacked twice keeps its last record."""
    return {tuple(r["target_indices"]): r for r in records
            if r.get("status") == "ok" and (keep is None or keep(r))}


def warn_duplicates(path: str, records: list[dict]) -> None:
    """One line on stderr if `records` (read from `path`) hold an attack (fingerprint, attack_id) more than once."""
    keys = [(r.get("fingerprint"), r["attack_id"]) for r in records if "attack_id" in r]
    doubled = len(keys) - len(set(keys))
    if doubled:
        print(f"warning: {path} holds {doubled} duplicate record(s) of the same attack (same attack_id and "
              "config); one record per attack is kept", file=sys.stderr)


def save_grid(path: str, rows: Iterable[np.ndarray], *, scale: int = 2, gap: int = 2) -> None:
    """Writes rows of images as one PNG grid. Each row: (N, H, W, C) in [0, 1], C in {1, 3}."""
    rows = [np.asarray(r) for r in rows]
    n, h, w, c = rows[0].shape
    if any(r.shape != rows[0].shape for r in rows):
        raise ValueError(f"all grid rows need the same shape, got {[r.shape for r in rows]}")
    canvas = np.ones((len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = image if c == 3 else image[..., :1]
    pixels = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)


def read_reconstructions(study_dir: str) -> dict[int, np.ndarray]:
    """{attack id: its (B, H, W, C) [0, 1] reconstruction} from every STUDY_DIR/reconstructions/*.npz
    ({} when there are none)."""
    folder, images = os.path.join(study_dir, "reconstructions"), {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with np.load(os.path.join(folder, name)) as saved:
            images.update(zip(saved["ids"].tolist(), saved["images01"]))
    return images
