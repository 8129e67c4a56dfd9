"""Reading images for image tasks: bad files in words, RGB conversion, augmentations, class folders, relative paths."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deltatune.data.folders import read_class_folders
from deltatune.data.images import horizontal_flip, image_problem, load_image, random_resized_crop
from deltatune.data.loading import load_table
from deltatune.data.paths import base_folder, check_data_file, class_folder_kind, resolve_file
from deltatune.data.splits import split_source
from deltatune.errors import DeltatuneError


def _png(path: Path, colour=(255, 0, 0), size=(20, 10), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def test_a_good_image_has_no_problem_and_loads_as_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (8, 6), 128).save(grey)
    assert image_problem(grey) is None
    img = load_image(grey, "rows.csv: row 1")
    assert img.mode == "RGB" and img.size == (8, 6) and img.getpixel((0, 0)) == (128, 128, 128)


def test_bad_images_are_named_in_words(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    floats = tmp_path / "depth.tif"
    Image.fromarray(np.zeros((4, 4), dtype=np.float32), mode="F").save(floats)
    assert image_problem(empty) == "is empty (0 bytes)"
    assert image_problem(text) == "is not an image Pillow can read"
    assert image_problem(tmp_path / "gone.png") == "does not exist"
    assert "image mode F" in image_problem(floats)
    with pytest.raises(DeltatuneError, match=r"rows.csv: row 2: .*empty.jpg is empty \(0 bytes\); .*data.skip_bad_rows"):
        load_image(empty, "rows.csv: row 2")


def test_a_truncated_image_is_refused(tmp_path):
    good = _png(tmp_path / "a.png", size=(64, 64))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    assert image_problem(cut) is not None
    with pytest.raises(DeltatuneError, match="cut.png"):
        load_image(cut, "x")


def test_a_truncated_jpeg_that_verify_lets_through_is_refused(tmp_path):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[:3000])
    with Image.open(cut) as img:
        img.verify()  # the header and structure pass: only decoding the pixels finds the cut
    assert "damaged image" in image_problem(cut)


def test_random_resized_crop_stays_inside_the_image_and_is_seeded():
    img = Image.new("RGB", (400, 533))
    crops = [random_resized_crop(img, random.Random(3)).size for _ in range(2)]
    assert crops[0] == crops[1]
    sizes = [random_resized_crop(img, random.Random(s)).size for s in range(50)]
    assert all(0 < w <= 400 and 0 < h <= 533 for w, h in sizes)
    areas = [w * h / (400 * 533) for w, h in sizes]
    assert min(areas) >= 0.08 - 0.01 and len(set(sizes)) > 10
    ratios = [w / h for w, h in sizes]
    assert all(3 / 4 - 0.02 <= r <= 4 / 3 + 0.02 for r in ratios)


def test_horizontal_flip_mirrors_about_half_the_time():
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (255, 0, 0))
    rng = random.Random(0)
    flipped = [horizontal_flip(img, rng).getpixel((1, 0)) == (255, 0, 0) for _ in range(200)]
    assert 60 < sum(flipped) < 140


def test_class_folders_give_image_and_label_rows(tmp_path):
    root = tmp_path / "train"
    _png(root / "cat" / "b.png")
    _png(root / "cat" / "a.jpg")
    _png(root / "dog" / "c.png")
    (root / "dog" / "README.txt").write_text("not an example")
    (root / "notes.md").write_text("not a class")
    assert class_folder_kind(root) == "image" and check_data_file(str(root)) == root
    ds = load_table(str(root))
    assert ds.column_names == ["image", "label"]
    assert ds["label"] == ["cat", "cat", "dog"]
    assert [Path(p).name for p in ds["image"]] == ["a.jpg", "b.png", "c.png"] and all(Path(p).is_absolute() for p in ds["image"])
    assert read_class_folders(root)["image"] == ds["image"]


def test_a_folder_without_class_folders_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(DeltatuneError, match="is a folder; give a data file .* or a folder of class folders"):
        check_data_file(str(tmp_path))


def test_class_folders_mixing_images_and_audio_are_refused(tmp_path):
    _png(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.wav").write_bytes(b"RIFF")
    with pytest.raises(DeltatuneError, match="both images .* and audio files"):
        read_class_folders(tmp_path)


def test_relative_paths_start_from_the_data_file(tmp_path, monkeypatch):
    data = tmp_path / "data" / "rows.csv"
    data.parent.mkdir()
    data.write_text("image,label\nimgs/a.png,x\n")
    monkeypatch.chdir(tmp_path)
    assert base_folder(str(data)) == data.parent
    assert base_folder(split_source(str(data), "split", "train")) == data.parent  # "rows.csv (split=train rows, ...)"
    assert resolve_file("imgs/a.png", str(data)) == data.parent / "imgs" / "a.png"
    assert resolve_file(str(tmp_path / "abs.png"), str(data)) == tmp_path / "abs.png"
    assert resolve_file("a.png", "request") == tmp_path / "a.png"  # rows given in Python: the current folder
