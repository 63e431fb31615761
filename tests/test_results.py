"""Results store: JSON-lines records and PNG grids."""

import numpy as np
import pytest
from PIL import Image

from gipip_jax import results


def test_records_round_trip_and_torn_last_line(tmp_path):
    path = str(tmp_path / "results.jsonl")
    assert results.read_records(path) == []
    results.append_record(path, {"psnr": 12.5, "target_indices": [3]})
    results.append_record(path, {"psnr": float("inf"), "target_indices": [4]})
    with open(path, "a") as f:
        f.write('{"psnr": 1')  # a write cut off by a kill
    records = results.read_records(path)
    assert [r["target_indices"] for r in records] == [[3], [4]]
    assert records[1]["psnr"] == float("inf")


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="corrupt"):
        results.read_records(str(path))


def test_grid_layout(tmp_path):
    top = np.zeros((3, 4, 5, 3), np.float32)
    bottom = np.ones((3, 4, 5, 3), np.float32)
    path = str(tmp_path / "grid.png")
    results.save_grid(path, [top, bottom], scale=1, gap=2)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (2 * 4 + 2, 3 * 5 + 2 * 2, 3)
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="same shape"):
        results.save_grid(path, [top, bottom[:2]])
