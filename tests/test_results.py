"""Results store: JSON-lines records and PNG grids."""

import json

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


def test_ok_records_keeps_finished_attacks_in_file_order(tmp_path):
    assert results.ok_records(str(tmp_path)) == []
    statuses = ["ok", "failed", "ok", "diverged"]
    results.append_records(results.records_path(str(tmp_path)),
                           [{"attack_id": i, "status": s} for i, s in enumerate(statuses)] + [{"attack_id": 4}])
    assert [r["attack_id"] for r in results.ok_records(str(tmp_path))] == [0, 2]


def test_append_after_a_torn_last_line_cuts_the_fragment_off(tmp_path, capsys):
    path = str(tmp_path / "results.jsonl")
    results.append_record(path, {"attack_id": 0})
    results.append_record(path, {"attack_id": 1})
    with open(path, "a") as f:
        f.write('{"attack_id": 2, "psnr": 1')  # attack 2's write cut off by a kill
    results.append_record(path, {"attack_id": 2, "psnr": 15.0})  # the resumed run redoes attack 2
    assert results.read_records(path) == [{"attack_id": 0}, {"attack_id": 1}, {"attack_id": 2, "psnr": 15.0}]
    text = open(path).read()
    assert text.endswith("\n") and [json.loads(line) for line in text.splitlines()] == results.read_records(path)
    assert "torn last line" in capsys.readouterr().err


def test_a_whole_last_record_that_lost_only_its_newline_is_kept(tmp_path):
    path = str(tmp_path / "results.jsonl")
    with open(path, "w") as f:
        f.write('{"attack_id": 0}\n{"attack_id": 1}')
    assert results.read_records(path) == [{"attack_id": 0}, {"attack_id": 1}]
    results.append_record(path, {"attack_id": 2})
    assert open(path).read().splitlines() == ['{"attack_id": 0}', '{"attack_id": 1}', '{"attack_id": 2}']


def test_a_torn_first_line_and_a_torn_multibyte_character_are_cut_off(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes('{"label": "é'.encode()[:-1])  # no newline at all, cut inside a UTF-8 character
    assert results.read_records(str(path)) == []
    results.append_record(str(path), {"a": 1})
    assert path.read_text() == '{"a": 1}\n'


def test_torn_line_longer_than_a_read_block_is_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_TAIL_BLOCK", 4)
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"b": "' + "x" * 50)
    results.append_record(str(path), {"c": 3})
    assert path.read_text() == '{"a": 1}\n{"c": 3}\n'


@pytest.mark.parametrize("middle", ["not json", "[1, 2]", '{"a": 1'])
def test_corrupt_line_in_the_middle_is_an_error(tmp_path, middle):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n' + middle + '\n{"a": 2}\n')
    with pytest.raises(results.ResultsError, match=r"results.jsonl:2 .*corrupt"):
        results.read_records(str(path))
    assert issubclass(results.ResultsError, ValueError)


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


def test_append_records_writes_a_batch_as_lines_after_repairing_a_torn_tail(tmp_path):
    path = str(tmp_path / "results.jsonl")
    results.append_records(path, [{"attack_id": 0}, {"attack_id": 1}])
    with open(path, "a") as f:
        f.write('{"attack_id": 2, "psnr": 1')  # a wave's write cut off by a kill
    results.append_records(path, [])   # nothing to write: the file is left alone
    assert open(path).read().endswith('"psnr": 1')
    results.append_records(path, [{"attack_id": 2}, {"attack_id": 3, "label": "é"}])
    assert results.read_records(path) == [{"attack_id": i} for i in range(3)] + [{"attack_id": 3, "label": "é"}]
    assert open(path, encoding="utf-8").read().count("\n") == 4
