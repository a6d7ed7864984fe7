"""The shared COCO-instances reader: counts, decoding against pycocotools, validation errors.

Generated files (tmp_path) cover everything in the default run; the real COCO128 file from
/work/shared/data adds checks on real polygons and crowd RLEs when that folder exists.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from litseg.io import DataError
from litseg.readers.coco import CocoInstances, LabelMap, decode_segmentation, encode_mask, rle_string_counts
from tests.fakes import uncompressed_rle, write_coco

# pycocotools 2.0.x under numpy 2 warns on every decode (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

COCO128 = Path("/work/shared/data/coco_subset")
COCO128_JSON = COCO128 / "annotations" / "instances_train2017.json"
COCO128_IMAGES = COCO128 / "train2017"


# ----------------------------------------------------------------------------- helpers


def pycocotools_api(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def crowd_mask_a() -> np.ndarray:
    m = np.zeros((20, 30), dtype=bool)
    m[2:6, 20:28] = True
    m[15:19, 1:4] = True
    return m


def mask_b() -> np.ndarray:
    m = np.zeros((16, 16), dtype=bool)
    m[3:9, 4:12] = True
    m[10, 0:16] = True
    return m


def crowd_mask_b() -> np.ndarray:
    m = np.zeros((16, 16), dtype=bool)
    m[12:16, 12:16] = True
    return m


def small_coco() -> dict:
    """3 images (one without annotations, one in a sub-folder), 3 categories with gappy ids,
    5 annotations listed out of id order: 2 polygons (one in two parts), an uncompressed crowd
    RLE, a compressed RLE and a compressed crowd RLE."""
    compressed_b = encode_mask(mask_b())
    compressed_crowd_b = encode_mask(crowd_mask_b())
    return {
        "info": {"description": "generated"},
        "images": [
            {"id": 3, "file_name": "c.png", "height": 10, "width": 12},
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30, "license": 1},
            {"id": 2, "file_name": "sub/b.png", "height": 16, "width": 16},
        ],
        "categories": [
            {"id": 5, "name": "bird", "supercategory": "animal"},
            {"id": 1, "name": "cat", "supercategory": "animal"},
            {"id": 2, "name": "dog"},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 40.0, "bbox": [2, 3, 10, 8],
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
            {"id": 11, "image_id": 1, "category_id": 5, "iscrowd": 1, "area": 44.0, "bbox": [1, 2, 27, 17],
             "segmentation": uncompressed_rle(crowd_mask_a())},
            {"id": 3, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 30.5, "bbox": [14.5, 10, 15.5, 10],
             "segmentation": [[15, 12, 20, 12, 17.5, 18], [22.5, 10.0, 29.5, 10.0, 29.5, 19.5, 22.5, 19.5]]},
            {"id": 9, "image_id": 2, "category_id": 2, "iscrowd": 1, "area": 16.0, "bbox": [12, 12, 4, 4],
             "segmentation": compressed_crowd_b},
            {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 64.0, "bbox": [0, 3, 16, 8],
             "segmentation": compressed_b},
        ],
    }


def write_dataset(root: Path, data: dict) -> Path:
    return write_coco(root, data, image_dir="images", json_name="instances.json", fill=90)


@pytest.fixture
def small(tmp_path) -> tuple[Path, Path]:
    json_path = write_dataset(tmp_path, small_coco())
    return json_path, tmp_path / "images"


# ----------------------------------------------------------------------------- generated data


def test_generated_counts_ids_and_order(small):
    json_path, root = small
    coco = CocoInstances.load(json_path, root)
    raw = json.loads(json_path.read_text())
    assert len(coco) == len(coco.images) == len(raw["images"]) == 3
    assert len(coco.annotations) == len(raw["annotations"]) == 5
    assert len(coco.categories) == len(raw["categories"]) == 3
    assert coco.image_ids == (1, 2, 3) and coco.category_ids == (1, 2, 5)
    assert list(coco.annotations) == [3, 4, 7, 9, 11]
    # per-image lists: ascending annotation id whatever the file order
    assert [a.id for a in coco.annotations_of(1)] == [3, 7, 11]
    assert [a.id for a in coco.annotations_of(1, crowd=False)] == [3, 7]
    assert [a.id for a in coco.annotations_of(1, crowd=True)] == [11]
    assert coco.annotations_of(3) == ()
    ann = coco.annotations[3]
    assert (ann.image_id, ann.category_id, ann.iscrowd, ann.area) == (1, 2, False, 30.5)
    assert ann.bbox == (14.5, 10.0, 15.5, 10.0) and ann.bbox_xyxy == (14.5, 10.0, 30.0, 20.0)
    assert [coco.annotations[i].kind for i in (3, 4, 11)] == ["polygon", "compressed_rle", "rle"]
    assert coco.images[2].file_name == "sub/b.png" and coco.images[2].height == 16
    assert coco.image_path(2) == root / "sub" / "b.png"
    assert coco.category_name(5) == "bird" and coco.category_id("dog") == 2
    assert coco.categories[1].supercategory == "animal" and coco.categories[2].supercategory == ""
    assert coco.read_image(1).shape == (20, 30, 3)


def test_generated_masks_match_pycocotools(small):
    json_path, root = small
    coco = CocoInstances.load(json_path, root)
    api = pycocotools_api(json_path)
    for ann_id, ann in coco.annotations.items():
        ours = coco.annotation_mask(ann_id)
        theirs = api.annToMask(api.anns[ann_id])
        assert ours.dtype == bool and ours.flags.c_contiguous
        assert ours.shape == (coco.images[ann.image_id].height, coco.images[ann.image_id].width)
        np.testing.assert_array_equal(ours, theirs.astype(bool), err_msg=f"annotation {ann_id} ({ann.kind})")
        assert ours.any()
    # RLE annotations decode to exactly the masks they were made from
    np.testing.assert_array_equal(coco.annotation_mask(11), crowd_mask_a())
    np.testing.assert_array_equal(coco.annotation_mask(4), mask_b())
    np.testing.assert_array_equal(coco.annotation_mask(9), crowd_mask_b())
    # the rectangle polygon covers the rectangle's interior
    assert coco.annotation_mask(7)[4:10, 3:11].all()
    # two-part polygon = union of its parts
    parts = [decode_segmentation([p], 20, 30) for p in coco.annotations[3].segmentation]
    np.testing.assert_array_equal(coco.annotation_mask(3), parts[0] | parts[1])
    assert mask_utils.area(coco.annotation_rle(4)) == mask_b().sum()


def test_image_instances_keep_crowd_apart(small):
    json_path, root = small
    coco = CocoInstances.load(json_path, root)
    inst = coco.image_instances(1)
    assert inst.masks.shape == (2, 20, 30) and inst.masks.dtype == bool and len(inst) == 2
    assert inst.annotation_ids.tolist() == [3, 7] and inst.category_ids.tolist() == [2, 1]
    np.testing.assert_array_equal(inst.boxes, [[14.5, 10, 15.5, 10], [2, 3, 10, 8]])
    np.testing.assert_array_equal(inst.masks[0], coco.annotation_mask(3))
    np.testing.assert_array_equal(inst.masks[1], coco.annotation_mask(7))
    assert inst.crowd_masks.shape == (1, 20, 30)
    assert inst.crowd_annotation_ids.tolist() == [11] and inst.crowd_category_ids.tolist() == [5]
    np.testing.assert_array_equal(inst.ignore, crowd_mask_a())

    only_dogs = coco.image_instances(2, category_ids=[2])
    assert only_dogs.masks.shape == (0, 16, 16) and only_dogs.crowd_annotation_ids.tolist() == [9]

    empty = coco.image_instances(3)
    assert empty.masks.shape == (0, 10, 12) and empty.crowd_masks.shape == (0, 10, 12)
    assert empty.boxes.shape == (0, 4) and not empty.ignore.any() and empty.ignore.shape == (10, 12)


def test_label_map_closed_and_open_set(small):
    json_path, root = small
    coco = CocoInstances.load(json_path, root)
    closed = coco.label_map()
    assert isinstance(closed, LabelMap)
    assert closed.names == ("cat", "dog", "bird") and closed.category_ids == (1, 2, 5)
    assert closed.unknown_index is None and closed.num_classes == closed.num_known == 3
    assert [closed(c) for c in (1, 2, 5)] == [0, 1, 2] and closed.is_known(5)

    # known categories by name or id, in any order -> sorted by category id; the rest -> unknown
    open_set = coco.label_map(["dog", 1])
    assert open_set.category_ids == (1, 2) and open_set.names == ("cat", "dog", "unknown")
    assert open_set.unknown_index == 2 and open_set.unknown_ids == (5,)
    assert open_set.num_known == 2 and open_set.num_classes == 3
    assert open_set.indices([5, 2, 1, 5]).tolist() == [2, 1, 0, 2]
    assert open_set.is_known(2) and not open_set.is_known(5)
    with pytest.raises(KeyError, match="category id 99"):
        open_set.index(99)

    with pytest.raises(DataError, match="known category 'horse'") as err:
        coco.label_map(["cat", "horse"])
    assert str(err.value).startswith(str(json_path))
    with pytest.raises(DataError, match="known category id 3 "):
        coco.label_map([3])
    with pytest.raises(DataError, match="twice"):
        coco.label_map(["cat", 1])


def test_subset_split_and_to_dict_round_trip(small):
    json_path, root = small
    coco = CocoInstances.load(json_path, root)
    sub = coco.subset([2])
    assert sub.image_ids == (2,) and list(sub.annotations) == [4, 9] and sub.category_ids == (1, 2, 5)
    with pytest.raises(KeyError):
        coco.subset([2, 77])

    train, val = coco.split(0.5, salt="s")
    train2, val2 = coco.split(0.5, salt="s")
    assert (train.image_ids, val.image_ids) == (train2.image_ids, val2.image_ids)
    assert set(train.image_ids) | set(val.image_ids) == {1, 2, 3}
    assert not set(train.image_ids) & set(val.image_ids)
    for image_id in coco.image_ids:  # the side depends on the id's hash only
        expected_val = CocoInstances.hash_fraction(image_id, "s") < 0.5
        assert (image_id in val.image_ids) == expected_val
        assert set(a.id for a in coco.annotations_of(image_id)) <= set(
            (val if expected_val else train).annotations)
    assert coco.split(0.0)[1].image_ids == () and coco.split(1.0)[0].image_ids == ()
    fractions = [CocoInstances.hash_fraction(i) for i in range(2000)]
    assert 0.45 < float(np.mean(np.array(fractions) < 0.5)) < 0.55

    again = CocoInstances.from_dict(json.loads(json.dumps(coco.to_dict())), json_path, root)
    assert again.image_ids == coco.image_ids and list(again.annotations) == list(coco.annotations)
    for ann_id in coco.annotations:
        np.testing.assert_array_equal(again.annotation_mask(ann_id), coco.annotation_mask(ann_id))
    api = coco.coco_api()
    assert sorted(api.getAnnIds(imgIds=[1])) == [3, 7, 11] and sorted(api.getCatIds()) == [1, 2, 5]


def test_encode_mask_and_rle_strings():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (33, 40)]:
        for density in (0.0, 0.3, 1.0):
            m = rng.random(shape) < density
            rle = encode_mask(m)
            assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
            np.testing.assert_array_equal(decode_segmentation(rle, *shape), m)
            # our reading of the compressed string = the hand-written run lengths
            assert rle_string_counts(rle["counts"]) == uncompressed_rle(m)["counts"]
            np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(m), *shape), m)
    with pytest.raises(ValueError, match="invalid character"):
        rle_string_counts("0~")
    with pytest.raises(ValueError, match="ends inside"):
        rle_string_counts("0P")  # 'P' = 32: continuation bit set, then nothing


def test_image_size_mismatch_names_the_image(small):
    json_path, root = small
    data = small_coco()
    data["images"][1]["height"] = 21  # a.png is 20 high
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    json_path.write_text(json.dumps(data))
    coco = CocoInstances.load(json_path, root)
    with pytest.raises(DataError, match="does not match image 1") as err:
        coco.read_image(1)
    assert str(err.value).startswith(str(root / "a.png"))


# ----------------------------------------------------------------------------- validation


def _mutate(data: dict, ann_id: int | None = None, image_id: int | None = None):
    if ann_id is not None:
        return next(a for a in data["annotations"] if a["id"] == ann_id)
    return next(i for i in data["images"] if i["id"] == image_id)


def _bad_cases():
    def unknown_image(d):
        _mutate(d, 7)["image_id"] = 99

    def unknown_category(d):
        _mutate(d, 3)["category_id"] = 42

    def odd_polygon(d):
        _mutate(d, 7)["segmentation"] = [[2, 3, 12, 3, 12, 11, 2]]

    def short_polygon(d):
        _mutate(d, 7)["segmentation"] = [[2, 3, 12, 3]]

    def string_in_polygon(d):
        _mutate(d, 7)["segmentation"] = [[2, 3, 12, "3", 12, 11]]

    def polygon_outside(d):
        _mutate(d, 3)["segmentation"] = [[15, 12, 40, 12, 17.5, 18]]

    def empty_polygon_list(d):
        _mutate(d, 7)["segmentation"] = []

    def segmentation_string(d):
        _mutate(d, 7)["segmentation"] = "not a mask"

    def rle_bad_char(d):
        _mutate(d, 4)["segmentation"]["counts"] = "0" + chr(127) + "1"

    def rle_bad_sum(d):
        _mutate(d, 11)["segmentation"]["counts"] = _mutate(d, 11)["segmentation"]["counts"][:-1]

    def rle_negative(d):
        _mutate(d, 11)["segmentation"]["counts"] = [-1, 601]

    def rle_wrong_size(d):
        _mutate(d, 4)["segmentation"]["size"] = [16, 15]

    def rle_no_counts(d):
        del _mutate(d, 9)["segmentation"]["counts"]

    def bbox_outside(d):
        _mutate(d, 7)["bbox"] = [25, 3, 10, 8]

    def bbox_short(d):
        _mutate(d, 7)["bbox"] = [2, 3, 10]

    def missing_key(d):
        del _mutate(d, 3)["area"]

    def bad_iscrowd(d):
        _mutate(d, 3)["iscrowd"] = 2

    def float_id(d):
        _mutate(d, 3)["category_id"] = 1.0

    def duplicate_annotation(d):
        _mutate(d, 3)["id"] = 7

    def duplicate_image(d):
        d["images"].append({"id": 2, "file_name": "c.png", "height": 10, "width": 12})

    def duplicate_category(d):
        d["categories"].append({"id": 1, "name": "lion"})

    def image_missing_height(d):
        del _mutate(d, image_id=3)["height"]

    def no_categories(d):
        del d["categories"]

    return [
        (unknown_image, ["annotation 7 ", "image_id 99 is not in 'images'"]),
        (unknown_category, ["annotation 3 ", "category_id 42 is not in 'categories'"]),
        (odd_polygon, ["annotation 7 ", "polygon 0 has 7 coordinates"]),
        (short_polygon, ["annotation 7 ", "polygon 0 has 4 coordinates"]),
        (string_in_polygon, ["annotation 7 ", "non-numeric", "'3'"]),
        (polygon_outside, ["annotation 3 ", "reaches outside the 30x20 image"]),
        (empty_polygon_list, ["annotation 7 ", "empty polygon list"]),
        (segmentation_string, ["annotation 7 ", "must be a polygon list or an RLE object"]),
        (rle_bad_char, ["annotation 4 ", "compressed RLE 'counts' string is malformed", "invalid character"]),
        (rle_bad_sum, ["annotation 11 ", "uncompressed RLE run lengths sum to", "height*width = 600"]),
        (rle_negative, ["annotation 11 ", "negative run length"]),
        (rle_wrong_size, ["annotation 4 ", "RLE size 16x15", "16x16"]),
        (rle_no_counts, ["annotation 9 ", "missing key 'counts'"]),
        (bbox_outside, ["annotation 7 ", "extends outside the 30x20 image"]),
        (bbox_short, ["annotation 7 ", "'bbox' must be [x, y, w, h]"]),
        (missing_key, ["annotation 3 ", "missing key 'area'"]),
        (bad_iscrowd, ["annotation 3 ", "'iscrowd' must be 0 or 1"]),
        (float_id, ["annotation 3 ", "'category_id' must be an integer, got 1.0"]),
        (duplicate_annotation, ["annotation 7 ", "duplicate annotation id"]),
        (duplicate_image, ["image 2 ", "duplicate image id"]),
        (duplicate_category, ["category 1 ", "duplicate category id"]),
        (image_missing_height, ["image 3 ", "missing key 'height'"]),
        (no_categories, ["top level: missing key 'categories'"]),
    ]


@pytest.mark.parametrize("mutate,expected", _bad_cases(), ids=lambda v: getattr(v, "__name__", ""))
def test_bad_input_raises_data_error_naming_file_and_id(small, mutate, expected):
    json_path, root = small
    data = small_coco()
    mutate(data)
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoInstances.load(json_path, root)
    message = str(err.value)
    assert message.startswith(f"{json_path}: ")
    assert err.value.path == json_path
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_rejected_entries_are_not_reported_again_by_their_annotations(small):
    json_path, root = small
    data = small_coco()
    del _mutate(data, image_id=1)["width"]  # image 1 has three annotations
    data["categories"] = [c for c in data["categories"] if c["id"] != 2] + [{"id": 2, "name": ""}]
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoInstances.load(json_path, root)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("2 problems in this COCO instances file:")
    assert "image 1 (images[1]): missing key 'width'" in lines[1]
    assert "category 2 (categories[2]): 'name' must be a non-empty string" in lines[2]
    assert len(lines) == 3  # annotations of image 1 / category 2 add no lines of their own

    del data["categories"]  # a missing list is one problem, not one per annotation
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoInstances.load(json_path, root)
    assert "category_id" not in str(err.value) and "2 problems" in str(err.value)


def test_missing_image_file_is_named(small):
    json_path, root = small
    (root / "sub" / "b.png").unlink()
    with pytest.raises(DataError, match=r"image 2 \(sub/b\.png\): file not found under") as err:
        CocoInstances.load(json_path, root)
    assert str(err.value).startswith(str(json_path))
    CocoInstances.load(json_path, root, check_files=False)  # opt-out
    CocoInstances.load(json_path)  # no image root: nothing to check
    with pytest.raises(DataError, match="is not a folder"):
        CocoInstances.load(json_path, root / "nowhere")


def test_truncated_json(small):
    json_path, root = small
    text = json.dumps(small_coco(), indent=1)
    json_path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"malformed JSON at line \d+ column \d+") as err:
        CocoInstances.load(json_path, root)
    assert str(err.value).startswith(str(json_path))


def test_non_utf8_bytes(small):
    json_path, root = small
    data = small_coco()
    data["categories"][0]["name"] = "b\u00e9rd"
    raw = json.dumps(data, ensure_ascii=False).encode("utf-8").replace("\u00e9".encode(), b"\xe9")
    json_path.write_bytes(raw)
    with pytest.raises(DataError, match=r"not UTF-8 text: byte 0xe9 at line 1") as err:
        CocoInstances.load(json_path, root)
    assert str(err.value).startswith(str(json_path))


def test_not_an_instances_object(small):
    json_path, root = small
    json_path.write_text("[1, 2]")
    with pytest.raises(DataError, match="got a JSON list"):
        CocoInstances.load(json_path, root)


def test_all_problems_reported_at_once(small):
    json_path, root = small
    data = small_coco()
    extra = copy.deepcopy(_mutate(data, 7))
    for k in range(12):  # 12 broken annotations, ids 100..111, one unknown image each
        data["annotations"].append({**copy.deepcopy(extra), "id": 100 + k, "image_id": 500 + k})
    _mutate(data, 3)["category_id"] = 42  # and one more of another kind, listed first (file order)
    (root / "c.png").unlink()  # and a missing file
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoInstances.load(json_path, root)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{json_path}: 14 problems in this COCO instances file (first 10 shown):"
    assert len(lines) == 12 and lines[-1] == "  ... and 4 more"
    assert "annotation 3 " in lines[1] and "category_id 42" in lines[1]
    for k, line in enumerate(lines[2:11]):
        assert f"annotation {100 + k} " in line and f"image_id {500 + k} is not in 'images'" in line

    # one problem: one line, no count
    data = small_coco()
    _mutate(data, 3)["category_id"] = 42
    json_path.write_text(json.dumps(data))
    (root / "c.png").write_bytes(b"")  # present again (only existence is checked at load)
    with pytest.raises(DataError) as err:
        CocoInstances.load(json_path, root)
    assert str(err.value) == (f"{json_path}: annotation 3 (annotations[2], image 1): "
                              "category_id 42 is not in 'categories'")


def test_invalid_polygons_drop_policy(small):
    json_path, root = small
    data = small_coco()
    _mutate(data, 3)["segmentation"].append([1, 1, 2, 2])  # a 2-point "polygon" beside a valid one
    _mutate(data, 7)["segmentation"] = [[2, 3, 12]]  # nothing valid left
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="2 problems"):
        CocoInstances.load(json_path, root)
    with pytest.warns(UserWarning, match="dropped 2 invalid polygon"):
        coco = CocoInstances.load(json_path, root, invalid_polygons="drop")
    assert 7 not in coco.annotations and len(coco.annotations[3].segmentation) == 2
    assert len(coco.dropped) == 2  # file order: annotation 7 comes first
    assert "annotation 7 " in coco.dropped[0] and coco.dropped[0].endswith("annotation dropped")
    assert "annotation 3 " in coco.dropped[1] and "polygon 2 has 4 coordinates" in coco.dropped[1]
    parts = [decode_segmentation([p], 20, 30) for p in small_coco()["annotations"][2]["segmentation"]]
    np.testing.assert_array_equal(coco.annotation_mask(3), parts[0] | parts[1])


# ----------------------------------------------------------------------------- real COCO128


coco128 = pytest.mark.skipif(not COCO128_JSON.is_file(), reason="/work/shared/data/coco_subset is absent")


@pytest.fixture(scope="module")
def real() -> CocoInstances:
    if not COCO128_JSON.is_file():
        pytest.skip("/work/shared/data/coco_subset is absent")
    return CocoInstances.load(COCO128_JSON, COCO128_IMAGES)


@coco128
def test_coco128_counts_match_plain_json(real):
    raw = json.loads(COCO128_JSON.read_text())
    assert len(real.images) == len(raw["images"]) == 128
    assert len(real.annotations) == len(raw["annotations"]) == 939
    assert len(real.categories) == len(raw["categories"]) == 80
    assert sum(a.iscrowd for a in real.annotations.values()) == sum(a["iscrowd"] for a in raw["annotations"]) == 10
    kinds = Counter(a.kind for a in real.annotations.values())
    assert kinds == {"polygon": 929, "rle": 10}
    per_image = Counter(a["image_id"] for a in raw["annotations"])
    assert {i: len(real.annotations_of(i)) for i in real.image_ids if real.annotations_of(i)} == dict(per_image)
    assert sum(1 for i in real.image_ids if real.annotations_of(i)) == 126
    assert {c["id"]: c["name"] for c in raw["categories"]} == {c: real.category_name(c) for c in real.category_ids}
    for image_id in real.image_ids:
        ids = [a.id for a in real.annotations_of(image_id)]
        assert ids == sorted(a["id"] for a in raw["annotations"] if a["image_id"] == image_id)


@coco128
def test_coco128_masks_match_pycocotools(real):
    api = pycocotools_api(COCO128_JSON)
    assert sorted(api.anns) == list(real.annotations)
    for ann_id, ann in real.annotations.items():
        np.testing.assert_array_equal(real.annotation_mask(ann), api.annToMask(api.anns[ann_id]).astype(bool),
                                      err_msg=f"annotation {ann_id} ({ann.kind}, crowd={ann.iscrowd})")
    crowd_images = sorted({a.image_id for a in real.annotations.values() if a.iscrowd})
    for image_id in crowd_images:
        inst = real.image_instances(image_id)
        crowd_ids = api.getAnnIds(imgIds=[image_id], iscrowd=True)
        crowd_ids = [a for a in crowd_ids if api.anns[a]["iscrowd"]]
        assert inst.crowd_annotation_ids.tolist() == sorted(crowd_ids)
        expected_ignore = np.zeros_like(inst.ignore)
        for a in crowd_ids:
            expected_ignore |= api.annToMask(api.anns[a]).astype(bool)
        np.testing.assert_array_equal(inst.ignore, expected_ignore)
        normal = sorted(a for a in api.getAnnIds(imgIds=[image_id]) if not api.anns[a]["iscrowd"])
        assert inst.annotation_ids.tolist() == normal
        for k, a in enumerate(normal):
            np.testing.assert_array_equal(inst.masks[k], api.annToMask(api.anns[a]).astype(bool))


@coco128
def test_coco128_open_set_and_images(real):
    voc = ["airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
           "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch", "train", "tv"]
    labels = real.label_map(voc)
    assert labels.num_known == 20 and labels.unknown_index == 20 and len(labels.unknown_ids) == 60
    assert labels.category_ids == tuple(sorted(real.category_id(n) for n in voc))
    assert labels(1) == 0 and labels.names[0] == "person" and labels.names[-1] == "unknown"
    assert labels(real.category_id("giraffe")) == 20
    first = real.image_ids[0]
    assert real.read_image(first).shape == (real.images[first].height, real.images[first].width, 3)
