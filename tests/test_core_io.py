"""The shared reader, writers and checkpoint loader reject bad files with the file's name."""

import numpy as np
import pytest
import torch
from PIL import Image

from litseg.checkpoint import load_checkpoint, load_weights
from litseg.io import DataError, read_csv_rows, read_image, read_json, read_mask, write_png, write_table


def test_read_image_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: file not found"):
        read_image(tmp_path / "nope.jpg")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(good)
    assert read_image(good).shape == (20, 30, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:40])  # truncated JPEG
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        read_image(bad)


def test_read_mask_modes(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (256 * 3 - 9))
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[0, 1], [2, 255]])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png: expected a single-channel label map"):
        read_mask(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png", mode="first_channel")[0, 0] == 10
    assert tuple(read_mask(tmp_path / "rgb.png", mode="rgb")[0, 0]) == (10, 20, 30)


def test_atomic_writers_leave_no_partial_file(tmp_path):
    target = tmp_path / "out.png"
    write_png(target, np.ones((3, 3), np.uint8))
    before = target.read_bytes()
    with pytest.raises(ValueError):
        write_png(target, np.full((3, 3), 999, np.int32))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_table_csv_and_markdown(tmp_path):
    write_table([{"a": 1, "b": 0.123456}, {"a": 2, "c": "x"}], tmp_path / "t.csv", tmp_path / "t.md")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b,c", "1,0.123456,", "2,,x"]
    assert "| 1 | 0.1235 |  |" in (tmp_path / "t.md").read_text()


def test_csv_reader_names_bad_lines(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("x,y\n1,2\n3\n")
    with pytest.raises(DataError, match=r"c.csv: line 3: 1 fields, header has 2"):
        read_csv_rows(p, ["x", "y"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['z'\]"):
        read_csv_rows(p, ["x", "z"])


def test_read_json_reports_position(tmp_path):
    p = tmp_path / "j.json"
    p.write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match="j.json: malformed JSON at line 2"):
        read_json(p)


def test_checkpoint_loader_is_weights_only_and_strict(tmp_path):
    net = torch.nn.Linear(3, 2)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "ok.ckpt")
    other = torch.nn.Linear(3, 2)
    load_weights(other, tmp_path / "ok.ckpt")
    assert torch.equal(other.weight, net.weight)
    with pytest.raises(DataError, match="missing.ckpt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")

    class Evil:  # an arbitrary pickled object must not be unpickled
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(DataError, match=r"evil.ckpt: not a readable checkpoint: torch.load\(weights_only=True\)"):
        load_checkpoint(tmp_path / "evil.ckpt")
    torch.save({"state_dict": torch.nn.Linear(4, 2).state_dict()}, tmp_path / "wrong.ckpt")
    with pytest.raises(DataError, match="wrong.ckpt: weights do not match|wrong.ckpt"):
        load_weights(other, tmp_path / "wrong.ckpt")


def test_write_table_with_a_fixed_schema(tmp_path):
    write_table([], tmp_path / "empty.csv", columns=["x", "y"])
    assert (tmp_path / "empty.csv").read_text().splitlines() == ["x,y"]  # header even with no rows
    write_table([{"y": 2, "x": 1}], tmp_path / "ordered.csv", tmp_path / "ordered.md", columns=["x", "y"])
    assert (tmp_path / "ordered.csv").read_text().splitlines() == ["x,y", "1,2"]
    assert (tmp_path / "ordered.md").read_text().splitlines()[0] == "| x | y |"
    with pytest.raises(ValueError):
        write_table([{"x": 1, "z": 3}], tmp_path / "bad.csv", columns=["x", "y"])
    assert not (tmp_path / "bad.csv").exists()  # nothing partial left behind
