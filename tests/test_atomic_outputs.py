"""Outputs are written to a temporary file and renamed: a crash mid-write (an exception inside the
writer, or SIGKILL of the writing process) leaves the previous file intact and loadable, and no
temporary file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from PIL import Image

from litseg.io import read_csv_rows, write_json, write_png, write_table
from tests.helpers import REPO


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_checkpoint_write_failing_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(BoringModel())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    good = torch.load(path, weights_only=True)

    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full (injected)")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="injected"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    again = torch.load(path, weights_only=True)  # still the previous, complete checkpoint
    assert again["global_step"] == good["global_step"] and again.keys() == good.keys()


def test_table_and_png_writers_failing_half_way_keep_the_previous_files(tmp_path, monkeypatch):
    write_table([{"a": 1, "b": 2.5}], tmp_path / "t.csv", tmp_path / "t.md")
    write_png(tmp_path / "p.png", np.full((4, 5), 7, np.uint8))
    write_json(tmp_path / "r.json", {"x": 1})

    import csv

    def broken_rows(self, rows):
        self.writerow({k: "partial" for k in self.fieldnames})
        raise OSError("killed (injected)")

    monkeypatch.setattr(csv.DictWriter, "writerows", broken_rows)
    with pytest.raises(OSError):
        write_table([{"a": 9, "b": 9.9}], tmp_path / "t.csv", tmp_path / "t.md")
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("injected")))
    with pytest.raises(OSError):
        write_png(tmp_path / "p.png", np.zeros((4, 5), np.uint8))
    monkeypatch.undo()
    assert [(r["a"], r["b"]) for r in read_csv_rows(tmp_path / "t.csv", ["a", "b"])] == [("1", "2.5")]
    assert np.asarray(Image.open(tmp_path / "p.png")).max() == 7
    assert _leftovers(tmp_path) == []


WRITER = """
import sys, time
from litseg.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as fh:
        for i in range(10_000):
            fh.write("new line %d\\n" % i)
            fh.flush()
            if i == 100:
                print("writing", flush=True)
                time.sleep(60)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old,complete\n")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "writing"  # half-way through the temporary file
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_text() == "old,complete\n"
