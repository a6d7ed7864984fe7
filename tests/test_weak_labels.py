"""Weak-label generator, file format and sparse-target rendering (WSSS study on Oxford-IIIT Pet)."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from scipy import ndimage

from litseg.io import DataError, read_image, read_mask, write_json, write_png
from litseg.weak_labels import (
    FORMAT_NAME,
    GeneratorConfig,
    check_size,
    flatten_keypoints,
    generate_weak_labels,
    load_weak_labels,
    polyline_pixels,
    render_box_target,
    render_sparse_target,
    unflatten_keypoints,
    write_weak_labels,
)
from litseg.weak_labels.__main__ import main as cli_main
from tests.fakes import write_pet

PET_ROOT = Path(__file__).parents[1] / "sample_data" / "oxford_pet_subset"
EIGHT = np.ones((3, 3), bool)
KEYPOINTS = A.KeypointParams(format="xy", remove_invisible=False)


@pytest.fixture(scope="module")
def pet_root() -> Path:
    assert (PET_ROOT / "annotations" / "trimaps").is_dir(), f"bundled sample data missing at {PET_ROOT}"
    return PET_ROOT


@pytest.fixture(scope="module")
def pet_document(pet_root: Path) -> dict:
    return generate_weak_labels(pet_root, GeneratorConfig(seed=0))


@pytest.fixture(scope="module")
def pet_labels(pet_document: dict, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("weak") / "weak.json"
    write_json(path, pet_document)
    return load_weak_labels(path)


def trimap_of(root: Path, stem: str) -> np.ndarray:
    return read_mask(root / "annotations" / "trimaps" / f"{stem}.png")


def make_dataset(root: Path, trimaps: dict[str, np.ndarray]) -> Path:
    """A tiny Oxford-Pet-layout dataset; image content is irrelevant to the generator."""
    return write_pet(root, trimaps, images=lambda stem, shape: np.zeros((*shape, 3), np.uint8), image_ext=".png")


def single_entry(tmp_path: Path, trimap: np.ndarray, **config) -> dict:
    root = make_dataset(tmp_path / "ds", {"img": trimap})
    return generate_weak_labels(root, GeneratorConfig(**config))["images"]["img"]


def rasterised(vertices) -> set[tuple[int, int]]:
    ys, xs = polyline_pixels(vertices)
    return set(zip(ys.tolist(), xs.tolist(), strict=True))


# ----------------------------------------------------------------------------- generator, hand-made trimaps


def c_shape_trimap() -> np.ndarray:
    """A 'C' opening to the right whose centroid (row 19.5, col 18.1) lies in the hole."""
    t = np.full((40, 40), 2, np.uint8)
    t[5:35, 5:15] = 1   # vertical bar
    t[5:15, 15:35] = 1  # top bar
    t[25:35, 15:35] = 1  # bottom bar
    return t


def test_point_is_inside_c_shape_where_the_centroid_is_not(tmp_path):
    trimap = c_shape_trimap()
    ys, xs = np.nonzero(trimap == 1)
    assert trimap[round(ys.mean()), round(xs.mean())] == 2  # the centroid misses the object
    entry = single_entry(tmp_path, trimap)
    (obj,) = entry["objects"]
    # Deepest pixel: in the corner blocks the depth is min(y-4, x-4, dist to hole corner (15,15));
    # the maximum 6 is first reached at row 10, col 10 (row-major tie-break).
    assert obj["point"] == [10, 10]
    assert obj["box"] == [5, 5, 34, 34]


def test_point_tie_break_and_box_on_a_rectangle(tmp_path):
    trimap = np.full((10, 10), 2, np.uint8)
    trimap[2:6, 2:8] = 1  # rows 2..5, cols 2..7: depth 2 on rows 3-4 x cols 3-6
    (obj,) = single_entry(tmp_path, trimap)["objects"]
    assert obj["point"] == [3, 3]
    assert obj["box"] == [2, 2, 7, 5]


def test_min_object_fraction_and_order(tmp_path):
    trimap = np.full((40, 40), 2, np.uint8)
    trimap[1:3, 1:3] = 1      # 4 px = 0.25 %
    trimap[20:40, 20:40] = 1  # 400 px = 25 %
    trimap[1:4, 30:39] = 1    # 27 px = 1.7 %
    boxes = [o["box"] for o in single_entry(tmp_path / "a", trimap)["objects"]]
    assert boxes == [[20, 20, 39, 39], [30, 1, 38, 3]]  # largest first, the 0.25 % speck dropped
    boxes = [o["box"] for o in single_entry(tmp_path / "b", trimap, min_object_fraction=0.001)["objects"]]
    assert boxes == [[20, 20, 39, 39], [30, 1, 38, 3], [1, 1, 2, 2]]
    # No component large enough: the largest alone.
    specks = np.full((40, 40), 2, np.uint8)
    specks[1:3, 1:3] = 1
    specks[10, 10:13] = 1
    assert [o["box"] for o in single_entry(tmp_path / "c", specks)["objects"]] == [[1, 1, 2, 2]]


def test_diagonal_pixels_are_one_object(tmp_path):
    trimap = np.full((20, 20), 2, np.uint8)
    trimap[2:8, 2:8] = 1
    trimap[8:14, 8:14] = 1  # touches the first square only at a corner
    assert [o["box"] for o in single_entry(tmp_path, trimap)["objects"]] == [[2, 2, 13, 13]]


def test_single_pixel_object(tmp_path):
    trimap = np.full((12, 12), 2, np.uint8)
    trimap[4, 7] = 1
    (obj,) = single_entry(tmp_path, trimap)["objects"]
    assert obj == {"point": [7, 4], "box": [7, 4, 7, 4], "scribble": [[7, 4], [7, 4]]}


def test_scribble_on_a_bar_is_its_straight_central_part(tmp_path):
    trimap = np.full((30, 100), 2, np.uint8)
    trimap[10:20, 5:95] = 1  # 10 x 90 bar; eroded by 2 -> rows 12..17, cols 8..91
    short = single_entry(tmp_path / "a", trimap, scribble_erosion=2, scribble_length_fraction=0.5)
    full = single_entry(tmp_path / "b", trimap, scribble_erosion=2, scribble_length_fraction=1.0)
    (s_short,), (s_full,) = ([o["scribble"] for o in e["objects"]] for e in (short, full))
    assert len(s_short) == 2 and s_short[0][1] == s_short[1][1]  # one horizontal segment
    assert 12 <= s_short[0][1] <= 17
    span_short = abs(s_short[1][0] - s_short[0][0])
    span_full = max(x for x, _ in s_full) - min(x for x, _ in s_full)
    assert 78 <= span_full <= 83  # the skeleton of the 84-wide core, minus its end forks
    assert abs(span_short - span_full / 2) <= 3
    for scribble in (s_short, s_full):
        assert all(trimap[y, x] == 1 and 8 <= x <= 91 and 12 <= y <= 17 for y, x in rasterised(scribble))


def test_scribble_erosion_falls_back_on_thin_objects(tmp_path):
    trimap = np.full((20, 60), 2, np.uint8)
    trimap[8:11, 5:55] = 1  # 3 px thick: depth 2 at most, so erosion 5 and 2 leave nothing
    (obj,) = single_entry(tmp_path, trimap, scribble_erosion=5)["objects"]
    pixels = rasterised(obj["scribble"])
    assert {y for y, _ in pixels} == {9}  # the middle row (erosion 1)
    assert len(pixels) >= 0.6 * 48 - 2


def test_background_points_keep_the_margin(tmp_path):
    trimap = np.ones((30, 30), np.uint8)
    trimap[:, 19] = 3
    trimap[:, 20:] = 2  # distance to the border column is x - 19; the image edge does not count
    few = single_entry(tmp_path / "a", trimap, n_background_points=5, bg_margin=5)["background_points"]
    assert len(few) == 5 and len({tuple(p) for p in few}) == 5
    assert all(x >= 24 for x, _ in few)
    many = single_entry(tmp_path / "b", trimap, n_background_points=1000, bg_margin=5)["background_points"]
    assert sorted(map(tuple, many)) == [(x, y) for x in range(24, 30) for y in range(30)]  # each once
    # A margin no pixel satisfies: the farthest background pixels (column 29) instead.
    far = single_entry(tmp_path / "c", trimap, n_background_points=5, bg_margin=50)["background_points"]
    assert len(far) == 5 and all(x == 29 for x, _ in far)


def test_background_scribbles_one_per_component(tmp_path):
    trimap = np.full((40, 60), 2, np.uint8)
    trimap[:, 20:25] = 1  # the pet splits the background: left 20 columns, right 35 columns
    both = single_entry(tmp_path / "a", trimap)["background_scribbles"]
    assert len(both) == 2
    assert all(x >= 25 for x, _ in both[0]) and all(x < 20 for x, _ in both[1])  # larger side first
    for scribble in both:
        assert all(trimap[y, x] == 2 for y, x in rasterised(scribble))
    assert len(single_entry(tmp_path / "b", trimap, max_background_scribbles=1)["background_scribbles"]) == 1


def test_seeding_is_per_image_and_order_independent(tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": c_shape_trimap(), "b": c_shape_trimap().T.copy()})
    forward = generate_weak_labels(root, GeneratorConfig(seed=3), stems=["a", "b"])["images"]
    backward = generate_weak_labels(root, GeneratorConfig(seed=3), stems=["b", "a"])["images"]
    assert forward == backward
    assert forward["a"]["background_points"] != forward["b"]["background_points"]


# ----------------------------------------------------------------------------- generator, real Oxford-Pet subset


def test_real_subset_objects(pet_root, pet_document):
    images = pet_document["images"]
    assert len(images) == 26
    counts = {stem: len(e["objects"]) for stem, e in images.items()}
    # Second components of >= 0.5 % of the image: a tail (Maine_Coon_206, 2.3 %), a paw (great_pyrenees_176, 0.6 %).
    assert {s: c for s, c in counts.items() if c != 1} == {"Maine_Coon_206": 2, "great_pyrenees_176": 2}
    for stem, entry in images.items():
        trimap = trimap_of(pet_root, stem)
        assert [entry["height"], entry["width"]] == list(trimap.shape)
        components, _ = ndimage.label(trimap == 1, structure=EIGHT)
        boxes_by_label = ndimage.find_objects(components)
        for obj in entry["objects"]:
            x, y = obj["point"]
            label = components[y, x]
            assert label > 0, f"{stem}: point outside the pet"
            rows, cols = boxes_by_label[label - 1]
            assert obj["box"] == [cols.start, rows.start, cols.stop - 1, rows.stop - 1], stem
            inside = components == label
            for width in (1, 3):  # the default rendering width too
                drawn = render_sparse_target(*trimap.shape, [], [], [obj["scribble"]], [], 1, scribble_width=width)
                assert inside[drawn == 1].all(), f"{stem}: scribble leaves its object (width {width})"
            length = sum(np.hypot(*np.subtract(a, b)) for a, b in zip(obj["scribble"], obj["scribble"][1:]))
            assert length > 0.2 * min(obj["box"][2] - obj["box"][0], obj["box"][3] - obj["box"][1]), stem


def test_real_subset_background(pet_root, pet_document):
    margin = pet_document["generator"]["bg_margin"]
    offsets = [(dy, dx) for dy in range(-margin + 1, margin) for dx in range(-margin + 1, margin)
               if dy * dy + dx * dx < margin * margin]
    for stem, entry in pet_document["images"].items():
        trimap = trimap_of(pet_root, stem)
        h, w = trimap.shape
        assert len(entry["background_points"]) == 5
        for x, y in entry["background_points"]:
            # Every pixel closer than the margin is background (or off the image).
            assert all(trimap[y + dy, x + dx] == 2 for dy, dx in offsets if 0 <= y + dy < h and 0 <= x + dx < w)
        assert 1 <= len(entry["background_scribbles"]) <= 2
        for scribble in entry["background_scribbles"]:
            drawn = render_sparse_target(h, w, [], [], [], [scribble], 1, scribble_width=3)
            assert (trimap[drawn == 0] == 2).all(), stem


def test_same_seed_same_bytes_other_seed_other_background(pet_root, tmp_path):
    stems_file = tmp_path / "stems.txt"
    stems_file.write_text("# a few\nAbyssinian_1\nMaine_Coon_206  # two objects\n\ngreat_pyrenees_176\n")
    paths = [tmp_path / f"{name}.json" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        write_weak_labels(pet_root, path, GeneratorConfig(seed=seed), stems_file=stems_file)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    same, other = (json.loads(p.read_text()) for p in paths[::2])
    assert list(same["images"]) == ["Abyssinian_1", "Maine_Coon_206", "great_pyrenees_176"]
    assert same["generator"]["seed"] == 0 and other["generator"]["seed"] == 1
    for stem in same["images"]:
        assert same["images"][stem]["background_points"] != other["images"][stem]["background_points"]
        assert same["images"][stem]["objects"] == other["images"][stem]["objects"]  # seed-free


def test_cli(pet_root, tmp_path, capsys):
    stems_file = tmp_path / "stems.txt"
    stems_file.write_text("Bombay_182\n")
    out = tmp_path / "out" / "weak.json"
    assert cli_main(["--root", str(pet_root), "--output", str(out), "--stems-file", str(stems_file),
                     "--seed", "7", "--n-background-points", "3", "--scribble-length-fraction", "0.5"]) == 0
    assert "1 images, 1 objects" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["format"] == FORMAT_NAME and document["version"] == 1
    assert document["generator"] == {"seed": 7, "min_object_fraction": 0.005, "n_background_points": 3,
                                     "bg_margin": 5, "scribble_erosion": 5, "scribble_length_fraction": 0.5,
                                     "max_background_scribbles": 2, "stems_file": str(stems_file)}
    assert len(document["images"]["Bombay_182"]["background_points"]) == 3
    assert cli_main(["--root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.json")]) == 1
    assert "nowhere/images: folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# ----------------------------------------------------------------------------- generator, bad input


def test_missing_trimap(tmp_path):
    root = make_dataset(tmp_path, {"a": c_shape_trimap()})
    write_png(root / "images" / "b.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"trimaps/b\.png: trimap missing for image .*b\.png"):
        generate_weak_labels(root)


def test_trimap_values_outside_1_2_3(tmp_path):
    trimap = c_shape_trimap()
    trimap[0, 0] = 0
    trimap[0, 1] = 4
    root = make_dataset(tmp_path, {"a": trimap})
    with pytest.raises(DataError, match=r"trimaps/a\.png: trimap values must be .*found \[0, 4\]"):
        generate_weak_labels(root)


def test_empty_pet_region(tmp_path):
    trimap = np.full((10, 10), 2, np.uint8)
    trimap[4:6, 4:6] = 3
    root = make_dataset(tmp_path, {"a": trimap})
    with pytest.raises(DataError, match=r"trimaps/a\.png: empty mask"):
        generate_weak_labels(root)


def test_stems_file_errors(tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": c_shape_trimap()})
    stems_file = tmp_path / "stems.txt"
    stems_file.write_text("a\nzebra_1\n")
    with pytest.raises(DataError, match=r"stems\.txt: 1 stem\(s\) without an image .*zebra_1"):
        write_weak_labels(root, tmp_path / "out.json", stems_file=stems_file)
    stems_file.write_text("a\na\n")
    with pytest.raises(DataError, match=r"stems\.txt: line 2: stem 'a' listed twice"):
        write_weak_labels(root, tmp_path / "out.json", stems_file=stems_file)
    assert not (tmp_path / "out.json").exists()


def test_bad_generator_parameters():
    with pytest.raises(ValueError, match="scribble_length_fraction"):
        GeneratorConfig(scribble_length_fraction=0.0)
    with pytest.raises(ValueError, match="bg_margin"):
        GeneratorConfig(bg_margin=-1)


# ----------------------------------------------------------------------------- file format


def test_load_round_trip(pet_document, pet_labels):
    assert set(pet_labels) == set(pet_document["images"])
    entry, labels = pet_document["images"]["Maine_Coon_206"], pet_labels["Maine_Coon_206"]
    assert (labels.height, labels.width) == (entry["height"], entry["width"])
    assert labels.fg_points == [tuple(o["point"]) for o in entry["objects"]]
    assert labels.boxes == [tuple(o["box"]) for o in entry["objects"]]
    assert labels.fg_scribbles == [tuple(map(tuple, o["scribble"])) for o in entry["objects"]]
    assert labels.background_points == tuple(map(tuple, entry["background_points"]))
    assert labels.has_object


def write_doc(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "weak.json"
    write_json(path, document)
    return path


def tiny_document(**image_fields) -> dict:
    entry = {"height": 10, "width": 20,
             "objects": [{"point": [3, 4], "box": [1, 2, 5, 6], "scribble": [[2, 3], [4, 5]]}],
             "background_points": [[15, 1]], "background_scribbles": [[[12, 8], [18, 8]]]} | image_fields
    return {"format": FORMAT_NAME, "version": 1, "generator": {}, "source_root": "x", "images": {"cat_1": entry}}


def test_load_rejects_wrong_format_and_version(tmp_path):
    path = write_doc(tmp_path, tiny_document() | {"format": "something-else"})
    with pytest.raises(DataError, match=r"weak\.json: not a weak-label file: format is 'something-else'"):
        load_weak_labels(path)
    path = write_doc(tmp_path, tiny_document() | {"version": 2})
    with pytest.raises(DataError, match=r"weak\.json: unsupported weak-label format version 2"):
        load_weak_labels(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"weak\.json: malformed JSON"):
        load_weak_labels(path)


def test_load_checks_expected_stems(tmp_path):
    path = write_doc(tmp_path, tiny_document())
    assert set(load_weak_labels(path, expected_stems=["cat_1"])) == {"cat_1"}
    assert set(load_weak_labels(path, expected_stems=[])) == {"cat_1"}  # extra stems are fine
    with pytest.raises(DataError, match=r"weak\.json: does not match the dataset: 2 image\(s\) .*\['dog_1', 'dog_2'\]"):
        load_weak_labels(path, expected_stems=["cat_1", "dog_1", "dog_2"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"height": "10"}, r"height must be an integer, got '10'"),
        ({"width": 20.0}, r"width must be an integer"),
        ({"background_points": [[25, 1]]}, r"background point 0 \[25, 1\] is outside the 20x10 image"),
        ({"objects": [{"point": [3, 4], "box": [5, 2, 1, 6], "scribble": [[2, 3]]}]}, r"object 0 box .* x1 < x0"),
        ({"objects": [{"point": [3, 4], "box": [1, 2, 5, 6], "scribble": []}]}, r"object 0 scribble has no vertices"),
        ({"objects": [{"point": [3, 4]}]}, r"object 0 must have 'point', 'box' and 'scribble'"),
    ],
)
def test_load_rejects_bad_entries(tmp_path, fields, message):
    path = write_doc(tmp_path, tiny_document(**fields))
    with pytest.raises(DataError, match=r"weak\.json: image 'cat_1': " + message):
        load_weak_labels(path)


def test_check_size(tmp_path):
    labels = load_weak_labels(write_doc(tmp_path, tiny_document()))
    check_size(labels, "cat_1", 10, 20, "images/cat_1.jpg")
    with pytest.raises(DataError, match=r"images/cat_1\.jpg: image is 21x10 but the weak-label file .*weak\.json "
                                        r"records 20x10"):
        check_size(labels, "cat_1", 10, 21, "images/cat_1.jpg")
    with pytest.raises(DataError, match=r"images/dog_1\.jpg: no weak labels for stem 'dog_1'"):
        check_size(labels, "dog_1", 10, 20, "images/dog_1.jpg")


# ----------------------------------------------------------------------------- rendering


def test_render_sparse_target_by_hand():
    target = render_sparse_target(6, 7, fg_points=[(2, 2)], bg_points=[(6, 5)], fg_scribbles=[],
                                  bg_scribbles=[[(0, 5), (3, 5)]], fg_value=3, point_radius=1, scribble_width=1)
    expected = np.full((6, 7), 255, np.uint8)
    expected[1, 2] = expected[2, 1:4] = expected[3, 2] = 3  # radius-1 disk: a plus
    expected[5, 0:4] = 0  # the scribble
    expected[4, 6] = expected[5, 5:7] = 0  # the clipped disk at the corner
    np.testing.assert_array_equal(target, expected)


def test_render_rounds_and_clips():
    target = render_sparse_target(5, 6, fg_points=[(1.4, 0.6), (-30.0, 2.0), (2.0, 40.0)], bg_points=[],
                                  fg_scribbles=[[(-5.0, 3.0), (2.5, 3.0)]], bg_scribbles=[], fg_value=1,
                                  point_radius=0, scribble_width=1)
    expected = np.full((5, 6), 255, np.uint8)
    expected[1, 1] = 1  # (1.4, 0.6) -> pixel column 1, row 1; the far points paint nothing
    expected[3, 0:4] = 1  # the visible part of the scribble, to x = round(2.5) = 3
    np.testing.assert_array_equal(target, expected)


def test_render_moves_points_less_than_a_pixel_out_onto_the_edge():
    points = [(5.9, 0.0), (-0.7, 4.2), (-1.0, 2.0), (6.0, 3.0), (2.0, -0.99)]
    target = render_sparse_target(5, 6, points, [], [], [], fg_value=1, point_radius=0)
    expected = np.full((5, 6), 255, np.uint8)
    expected[0, 5] = expected[4, 0] = expected[0, 2] = 1  # exactly -1 or w is a pixel out: dropped
    np.testing.assert_array_equal(target, expected)


def test_render_conflict_is_ignored_and_values_checked():
    target = render_sparse_target(3, 3, [(1, 1)], [(1, 1)], [], [], fg_value=1, point_radius=0)
    assert (target == 255).all()
    with pytest.raises(ValueError, match="fg_value"):
        render_sparse_target(3, 3, [], [], [], [], fg_value=255)


def test_polyline_pixels_match_render():
    vertices = [(1, 1), (7, 4), (7, 8), (2, 8)]
    drawn = render_sparse_target(10, 10, [], [], [vertices], [], 1, scribble_width=1)
    ys, xs = np.nonzero(drawn == 1)
    assert rasterised(vertices) == set(zip(ys.tolist(), xs.tolist(), strict=True))
    assert rasterised([(4, 2)]) == {(2, 4)}


def test_render_box_target_by_hand():
    target = render_box_target(6, 8, [[1, 1, 6, 4]], fg_value=2)
    expected = np.zeros((6, 8), np.uint8)
    expected[1:5, 1:7] = 2
    np.testing.assert_array_equal(target, expected)
    target = render_box_target(6, 8, [[1, 1, 6, 4], [-3, -3, 0, 0]], fg_value=2, edge_ignore=1)
    expected[1:5, 1:7] = 255
    expected[2:4, 2:6] = 2  # the core, one pixel in from each edge
    expected[0, 0] = 255  # the visible corner of the off-frame box is its rim
    np.testing.assert_array_equal(target, expected)


# ----------------------------------------------------------------------------- rendering after augmentation


def test_flatten_unflatten_round_trip():
    arrays, labels = flatten_keypoints([(1, 2), (3, 4)], [(5, 6)], [[(7, 8), (9, 10), (11, 12)]],
                                       [[(0, 1), (2, 3)], [(4, 4), (5, 5)]])
    assert arrays.shape == (10, 2) and arrays.dtype == np.float32
    assert labels[:4] == [("fg_point", 0), ("fg_point", 1), ("bg_point", 0), ("fg_scribble", 0)]
    back = unflatten_keypoints(arrays, labels)
    assert back.fg_points == [(1, 2), (3, 4)] and back.bg_points == [(5, 6)]
    assert back.fg_scribbles == [[(7, 8), (9, 10), (11, 12)]]
    assert back.bg_scribbles == [[(0, 1), (2, 3)], [(4, 4), (5, 5)]]
    empty, no_labels = flatten_keypoints([], [], [], [])
    assert empty.shape == (0, 2) and unflatten_keypoints(empty, no_labels).fg_points == []
    with pytest.raises(ValueError, match="dropped keypoints"):
        unflatten_keypoints(arrays[:-1], labels)


def transformed_targets(pet_root, pet_labels, transform, point_radius):
    """Per image: (transformed trimap, rendered fg points, in-frame rounded fg points, full sparse target)."""
    for stem, labels in pet_labels.items():
        image = read_image(pet_root / "images" / f"{stem}.jpg")
        keypoints, kinds = flatten_keypoints(labels.fg_points, labels.background_points,
                                             labels.fg_scribbles, labels.background_scribbles)
        out = transform(image=image, mask=trimap_of(pet_root, stem), keypoints=keypoints)
        sparse = unflatten_keypoints(out["keypoints"], kinds)
        h, w = out["mask"].shape
        points = render_sparse_target(h, w, sparse.fg_points, [], [], [], 1, point_radius=point_radius)
        # In frame = less than one pixel outside (rendered on the edge pixel, see render.py).
        in_frame = [(min(max(round(x), 0), w - 1), min(max(round(y), 0), h - 1))
                    for x, y in sparse.fg_points if -1 < x < w and -1 < y < h]
        full = render_sparse_target(h, w, sparse.fg_points, sparse.bg_points, sparse.fg_scribbles,
                                    sparse.bg_scribbles, 1, point_radius=point_radius, scribble_width=1)
        yield stem, out["mask"], points, in_frame, full


@pytest.mark.parametrize(
    ("transform", "point_radius", "crops"),
    [
        (A.Compose([A.HorizontalFlip(p=1), A.Resize(64, 64)], keypoint_params=KEYPOINTS), 1, False),
        (A.Compose([A.HorizontalFlip(p=1), A.Resize(256, 256)], keypoint_params=KEYPOINTS), 2, False),
        (A.Compose([A.RandomResizedCrop(size=(64, 64), scale=(0.2, 1.0)), A.HorizontalFlip()],
                   keypoint_params=KEYPOINTS, seed=0), 2, True),
    ],
    ids=["flip-resize64", "flip-resize256", "random-resized-crop"],
)
def test_points_survive_augmentation(pet_root, pet_labels, transform, point_radius, crops):
    n_in_frame = n_points = 0
    for stem, mask, points, in_frame, full in transformed_targets(pet_root, pet_labels, transform, point_radius):
        assert (mask[points == 1] == 1).all(), f"{stem}: a rendered point pixel is off the transformed pet"
        assert all(full[y, x] == 1 for x, y in in_frame), f"{stem}: an in-frame point was lost"
        n_in_frame += len(in_frame)
        n_points += len(pet_labels[stem].objects)
    assert n_points == 28
    if crops:
        assert 14 <= n_in_frame < 28  # the crop really cuts some points away
    else:
        assert n_in_frame == 28


def test_scribbles_survive_augmentation(pet_root, pet_labels):
    transform = A.Compose([A.HorizontalFlip(p=1), A.Resize(64, 64)], keypoint_params=KEYPOINTS)
    inside = total = 0
    for _, mask, _, _, full in transformed_targets(pet_root, pet_labels, transform, 0):
        inside += int(((full == 1) & (mask == 1)).sum() + ((full == 0) & (mask == 2)).sum())
        total += int((full != 255).sum())
    # At 1/8 scale the scribbles' 5-pixel erosion is under a pixel: rounding may touch the edge, rarely.
    assert total > 1500 and inside >= 0.995 * total


def test_edge_points_survive_downscaling():
    # Albumentations scales keypoints by x * s, so the last column of a 200-wide image lands
    # at 199 * 0.32 = 63.68 after Resize(64), which rounds to 64: it must still be drawn, on
    # column 63 (then flipped to column 0: 63 - 63.68 = -0.68).
    transform = A.Compose([A.Resize(64, 64), A.HorizontalFlip(p=1)], keypoint_params=KEYPOINTS)
    keypoints, kinds = flatten_keypoints([(199, 199), (0, 100)], [], [], [])
    out = transform(image=np.zeros((200, 200, 3), np.uint8), keypoints=keypoints)
    sparse = unflatten_keypoints(out["keypoints"], kinds)
    target = render_sparse_target(64, 64, sparse.fg_points, [], [], [], fg_value=1, point_radius=0)
    assert sorted(zip(*np.nonzero(target == 1))) == [(32, 63), (63, 0)]
