"""Oxford Pet DataModule: label sets, targets, splits, and bad input named by file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.weak_unet import OxfordPetDataModule
from litseg.io import DataError
from litseg.readers.oxford_pet import scan_pets, split_stems
from litseg.weak_labels.generate import GeneratorConfig, write_weak_labels
from tests.helpers import copy_pet_subset


def small_copy(pet_root: Path, tmp_path: Path, n: int | None = None) -> Path:
    return copy_pet_subset(pet_root, tmp_path / "pets", n)


def make_dm(root, **kw) -> OxfordPetDataModule:
    kw = {"image_size": 64, "batch_size": 2} | kw
    dm = OxfordPetDataModule(root=str(root), **kw)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(("label_set", "n"), [("binary", 2), ("species", 3), ("breed", 38)])
def test_label_sets_map_trimaps_to_class_ids(pet_root, label_set, n):
    dm = make_dm(pet_root, label_set=label_set)
    assert dm.num_classes == len(dm.class_names) == n
    for split in ("val", "test"):
        for i in range(len(dm.datasets[split])):
            sample = dm.datasets[split][i]
            rec = dm.datasets[split].records[i]
            values = set(np.unique(sample["mask"].numpy()).tolist())
            assert values <= {0, rec.class_id(label_set), 255}
            assert rec.class_id(label_set) in values
    assert make_dm(pet_root, label_set="breed").datasets["train"].records[0].class_id("breed") >= 1


def test_species_follow_the_name_case_rule(pet_root):
    recs = {r.stem: r for r in scan_pets(pet_root)}
    assert recs["Abyssinian_1"].class_id("species") == 1  # cat: upper-case breed name
    assert recs["great_pyrenees_174"].class_id("species") == 2  # dog
    assert recs["great_pyrenees_174"].class_id("breed") == 16  # official class id


def test_split_is_seeded_stratified_and_disjoint(pet_root):
    recs = scan_pets(pet_root)
    a, b = split_stems(recs, pet_root, 0.2, 0.2, seed=0), split_stems(recs, pet_root, 0.2, 0.2, seed=0)
    assert a == b
    assert split_stems(recs, pet_root, 0.2, 0.2, seed=1) != a
    all_stems = a["train"] + a["val"] + a["test"]
    assert sorted(all_stems) == sorted(r.stem for r in recs) and len(set(all_stems)) == len(all_stems)
    dogs = {r.stem for r in recs if not r.is_cat}
    assert any(s in dogs for s in a["val"]) and any(s in dogs for s in a["test"])


def test_border_pixels_become_ignore_index(pet_root):
    dm = make_dm(pet_root, image_size=256)
    sample = dm.datasets["val"][0]
    trimap = np.asarray(Image.open(dm.datasets["val"].records[0].trimap).resize((256, 256), Image.NEAREST))
    assert ((sample["mask"].numpy() == 255) == (trimap == 3)).mean() > 0.97


def test_weak_targets_survive_augmentation(pet_root):
    dm = make_dm(pet_root, weak_labels=str(pet_root / "weak_labels.json"), augment=True, image_size=128,
                 point_radius=1, scribble_width=1)
    ds = dm.datasets["train"]
    for i in range(len(ds)):
        s = ds[(i, 3)]
        dense, points = s["mask"].numpy(), s["points"].numpy()
        fg = points == 1
        assert fg.any(), ds.records[i].stem  # the object point is never lost by crop/flip/resize...
        assert (dense[fg] != 0).all()  # ...and lands on the pet (or its border), never on background
        # Pet pixels lie in the boxes, except specks below the generator's minimum object size.
        assert (s["boxes"].numpy()[dense == 1] == 1).mean() > 0.99
    assert (ds[(0, 3)]["image"] == ds[(0, 3)]["image"]).all() and not (ds[(0, 3)]["image"] == ds[(0, 4)]["image"]).all()


# ----------------------------------------------------------------------------- bad input


def test_missing_trimap_is_named(pet_root, tmp_path):
    root = small_copy(pet_root, tmp_path, 6)
    victim = sorted((root / "annotations" / "trimaps").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: missing trimap"):
        make_dm(root)


def test_corrupt_jpeg_is_named(pet_root, tmp_path):
    root = small_copy(pet_root, tmp_path, 10)
    dm = make_dm(root, val_fraction=0.3, test_fraction=0.3)
    victim = dm.datasets["val"].records[0].image
    victim.write_bytes(victim.read_bytes()[:500])
    with pytest.raises(DataError, match=rf"{victim.name}: cannot decode image"):
        dm.datasets["val"][0]


def test_trimap_of_another_size_is_named(pet_root, tmp_path):
    root = small_copy(pet_root, tmp_path, 10)
    dm = make_dm(root, val_fraction=0.3, test_fraction=0.3)
    trimap = dm.datasets["val"].records[0].trimap
    Image.open(trimap).resize((50, 40)).save(trimap)
    with pytest.raises(DataError, match=rf"{trimap.name}: size 50x40 does not match its image"):
        dm.datasets["val"][0]


def test_trimap_values_outside_1_2_3_are_named(pet_root, tmp_path):
    root = small_copy(pet_root, tmp_path, 10)
    dm = make_dm(root, val_fraction=0.3, test_fraction=0.3)
    trimap = dm.datasets["val"].records[0].trimap
    arr = np.asarray(Image.open(trimap)).copy()
    arr[0, 0] = 7
    Image.fromarray(arr).save(trimap)
    with pytest.raises(DataError, match=rf"{trimap.name}: trimap values must be 1, 2 or 3; found \[7\]"):
        dm.datasets["val"][0]


def test_empty_split_is_explained(pet_root, tmp_path):
    root = small_copy(pet_root, tmp_path, 2)
    with pytest.raises(DataError, match="split is empty"):
        make_dm(root)


def test_weak_label_file_for_another_dataset_is_rejected(pet_root, tmp_path):
    root = small_copy(pet_root, tmp_path, 12)
    other = small_copy(pet_root, tmp_path / "o", None)
    # Labels made for a different image set (the first 3 images only).
    for p in list((other / "images").iterdir())[3:]:
        p.unlink()
    labels = tmp_path / "wl.json"
    write_weak_labels(other, labels, GeneratorConfig())
    with pytest.raises(DataError, match=r"wl.json: does not match the dataset"):
        make_dm(root, weak_labels=str(labels), val_fraction=0.25, test_fraction=0.25)
