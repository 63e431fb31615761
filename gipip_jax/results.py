"""Result records and image grids written to a work directory.

`WORKDIR/results.jsonl` holds one JSON object per finished attack, appended with one write
call each (an interrupted run leaves whole lines), and is read back to skip finished work.
`save_grid` writes rows of (B, H, W, C) [0, 1] images as one PNG (e.g. ground truth above
reconstructions).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np
from PIL import Image


def append_record(path: str, record: dict) -> None:
    """Appends `record` as one JSON line and flushes it to disk."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: str) -> list[dict]:
    """All records of a results file ([] if it does not exist); a torn last line is ignored."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise ValueError(f"{path}:{number} is not valid JSON; the results file is corrupt") from None
    return records


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
