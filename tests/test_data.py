from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autocls.data.discover import DataSpec, check_folds, discover
from autocls.data.images import build_store, decode_images, load_square
from autocls.runtime.errors import AutoclsError
from tests.helpers import class_image, write_class_folders


def test_class_folders_found_with_any_extension_case(image_folder: Path) -> None:
    (image_folder / "class_0" / ".DS_Store").write_text("junk")
    (image_folder / "class_0" / "notes.txt").write_text("not an image")
    data = discover(image_folder)
    assert data.class_names == ("class_0", "class_1", "class_2")
    assert len(data) == 24
    assert data.class_counts() == {"class_0": 8, "class_1": 8, "class_2": 8}
    assert {p.suffix for p in data.paths} == {".png", ".PNG", ".jpg", ".JPEG"}


def test_empty_class_folder_is_ignored_with_a_warning(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (image_folder / "empty").mkdir()
    with caplog.at_level(logging.WARNING):
        data = discover(image_folder)
    assert "empty" not in data.class_names
    assert "has no images" in caplog.text


def test_single_class_is_an_error(tmp_path: Path) -> None:
    write_class_folders(tmp_path, classes=1)
    with pytest.raises(AutoclsError, match="at least 2 classes"):
        discover(tmp_path)


def test_csv_with_detected_columns_relative_to_csv(image_folder: Path) -> None:
    rows = [f"{p.relative_to(image_folder)},{p.parent.name}" for p in sorted(image_folder.rglob("*.png"))]
    csv = image_folder / "labels.csv"
    csv.write_text("filename,class\n" + "\n".join(rows))
    data = discover(csv)
    assert len(data) == len(rows)
    assert data.class_names == ("class_0", "class_1", "class_2")


def test_csv_given_with_labels_option_and_named_columns(image_folder: Path, tmp_path: Path) -> None:
    files = sorted(image_folder.rglob("*.png"))
    csv = tmp_path / "elsewhere" / "gt.csv"
    csv.parent.mkdir()
    csv.write_text(
        "id,img,truth\n" + "\n".join(f"{i},{p.relative_to(image_folder)},{p.parent.name}" for i, p in enumerate(files))
    )
    with pytest.raises(AutoclsError, match="--label-column"):
        discover(image_folder, labels_csv=csv)
    data = discover(image_folder, labels_csv=csv, file_column="img", label_column="truth")
    assert len(data) == len(files)


def test_csv_missing_files_and_empty_labels_are_listed(image_folder: Path) -> None:
    csv = image_folder / "labels.csv"
    csv.write_text("file,label\nclass_0/img 0.png,a\nnope.png,b\n")
    with pytest.raises(AutoclsError, match=r"1 listed files do not exist .*nope\.png"):
        discover(csv)
    csv.write_text("file,label\nclass_0/img 0.png,a\nclass_1/img 0.png,\n")
    with pytest.raises(AutoclsError, match="empty label"):
        discover(csv)


def test_fewer_images_than_folds_names_the_class(image_folder: Path) -> None:
    data = discover(image_folder)
    check_folds(data, 5)
    with pytest.raises(AutoclsError, match=r"'class_0' has 8.*set folds to 8"):
        check_folds(data, 10)


def test_study_name_from_the_data_folder(tmp_path: Path) -> None:
    assert DataSpec.of(tmp_path / "my photos").name == "my-photos"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (10, 12), 128),
        lambda: Image.new("RGBA", (10, 12), (255, 0, 0, 0)),
        lambda: Image.new("RGB", (10, 12), (0, 255, 0)).convert("P"),
        lambda: Image.fromarray(np.full((12, 10), 40000, dtype=np.uint16)),
        lambda: Image.new("CMYK", (10, 12), (0, 255, 255, 0)),
    ],
    ids=["grayscale", "rgba", "palette", "16-bit", "cmyk"],
)
def test_image_modes_become_rgb(tmp_path: Path, make) -> None:
    image = make()
    path = tmp_path / ("x.tif" if image.mode == "CMYK" else "x.png")
    image.save(path)
    array = load_square(path, 8)
    assert array.shape == (8, 8, 3) and array.dtype == np.uint8


def test_transparent_pixels_become_white_and_16bit_keeps_contrast(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (load_square(tmp_path / "clear.png", 4) == 255).all()
    ramp = np.tile(np.linspace(1000, 60000, 8).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    row = load_square(tmp_path / "ramp.png", 8)[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row.astype(int)) > 0).all()


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    square = load_square(tmp_path / "rot.jpg", 10)
    # shown rotated, the white half is on top: the top rows are bright, the bottom rows dark
    assert square[:3].mean() > 200 and square[-3:].mean() < 50


def test_unreadable_images_are_skipped_with_one_warning(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (image_folder / "class_0" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (image_folder / "class_1" / "empty.png").write_bytes(b"")
    data = discover(image_folder)
    with caplog.at_level(logging.WARNING):
        kept, store = build_store(data, 16)
    assert len(kept) == len(data) - 2
    assert store.images.shape == (len(kept), 3, 16, 16)
    assert caplog.text.count("skipping 2 unreadable images") == 1


def test_store_resizes_once_per_resolution(image_folder: Path) -> None:
    data = discover(image_folder)
    images, kept, failed = decode_images(data.paths, 16)
    assert not failed and len(kept) == len(data)
    _, store = build_store(data, 16)
    assert store.at(8) is store.at(8)
    assert store.at(8).shape == (len(data), 3, 8, 8) and store.at(16) is store.images
    assert np.array_equal(store.images.numpy(), images.numpy())


def test_generated_classes_differ(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    means = [np.asarray(class_image(c, rng)).mean(axis=(0, 1)).argmax() for c in range(3)]
    assert means == [0, 1, 2]


def test_csv_duplicates_and_paths_outside_the_data_folder_are_errors(
    image_folder: Path, tmp_path: Path, caplog
) -> None:
    csv = image_folder / "labels.csv"
    csv.write_text("file,label\nclass_0/img 0.png,a\nclass_1/img 0.png,b\n./class_0/img 0.png,a\n")
    assert len(discover(csv)) == 2 and "1 rows repeat an image" in caplog.text  # one image, two spellings
    csv.write_text("file,label\nclass_0/img 0.png,a\nclass_1/img 0.png,b\n./class_0/img 0.png,b\n")
    with pytest.raises(AutoclsError, match=r"two different labels \(class_0/img 0\.png is 'a' in row 2 but"):
        discover(csv)
    csv.write_text("class_0/img 0.png,a\nclass_1/img 0.png,b\nclass_2/img 0.png,c\n")  # no header row
    with pytest.raises(AutoclsError, match=r"no header row"):
        discover(csv)
    (tmp_path / "secret.png").write_bytes(b"")
    csv.write_text("file,label\nclass_0/img 0.png,a\n../secret.png,b\nclass_1/../../secret.png,b\n")
    with pytest.raises(AutoclsError, match=r"2 paths point outside the data folder"):
        discover(csv)


def test_unicode_and_spaces_in_class_and_file_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, name in enumerate(["chats noirs", "ñandú", "猫"]):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(2):
            class_image(label, rng).save(folder / f"photo été {i}.png")
    data = discover(tmp_path)
    assert data.class_names == ("chats noirs", "ñandú", "猫")
    kept, _store = build_store(data, 8)
    assert len(kept) == 6


def test_tiny_wide_and_decompression_bomb_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    Image.new("RGB", (3, 3), (10, 20, 30)).save(tmp_path / "tiny.png")
    Image.new("RGB", (400, 10), (10, 20, 30)).save(tmp_path / "wide.png")
    assert load_square(tmp_path / "tiny.png", 16).shape == (16, 16, 3)
    assert load_square(tmp_path / "wide.png", 16).shape == (16, 16, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400x10 is then past twice the limit
    _images, kept, failed = decode_images([tmp_path / "tiny.png", tmp_path / "wide.png"], 16)
    assert kept == [0] and "decompression-bomb" in failed[0][1]


def test_disk_cache_returns_the_same_pixels_and_is_invalidated_by_changes(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "class_0" / "broken.jpg").write_bytes(b"junk")
    data = discover(image_folder)
    cache = tmp_path / "cache"
    plain_data, plain = build_store(data, 16)
    first_data, first = build_store(data, 16, cache)
    assert len(list(cache.glob("*.u8"))) == 1
    again_data, again = build_store(data, 16, cache)  # read back, memory-mapped
    for images in (first.images, again.images):
        assert torch.equal(images, plain.images)
    assert again_data.paths == plain_data.paths == first_data.paths
    # a changed file gives another key: decoded afresh, not the stale pixels
    changed = data.paths[0]
    Image.new("RGB", (16, 16), (0, 0, 0)).save(changed, format="PNG" if changed.suffix.lower() == ".png" else "JPEG")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    _, fresh = build_store(discover(image_folder), 16, cache)
    assert len(list(cache.glob("*.u8"))) == 2
    assert fresh.images[0].sum() == 0 and not torch.equal(fresh.images, plain.images)


def test_every_decoding_failure_pillow_raises_skips_the_file(image_folder: Path, monkeypatch, caplog) -> None:
    """A malformed header raises more than OSError (here SyntaxError, struct.error, a decompression
    bomb): the size probe and the decoder skip the file and name it; nothing aborts."""
    import struct

    from autocls.data.discover import typical_side

    broken = {"syntax.png": SyntaxError("bad header"), "struct.png": struct.error("unpack"), "bomb.png": None}
    for name in broken:
        class_image(0, np.random.default_rng(1)).save(image_folder / "class_0" / name)
    real_open = Image.open

    def open_or_fail(path, *args, **kwargs):
        name = Path(getattr(path, "name", path)).name  # a path, or a buffer of the file's bytes
        if name in broken:
            raise broken[name] or Image.DecompressionBombError("too many pixels")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_or_fail)
    data = discover(image_folder)
    assert typical_side(data.paths, sample=len(data)) == 16
    kept, _ = build_store(data, 8)
    assert len(kept) == len(data) - 3
    assert "skipping 3 unreadable images" in caplog.text


def test_float_tensors_outside_0_1_are_refused_not_clamped(tmp_path: Path) -> None:
    import torch

    from autocls.model.ensemble import Ensemble

    ensemble = Ensemble.__new__(Ensemble)
    ensemble.decode_size = 8
    with pytest.raises(AutoclsError, match=r"values in \[0, 1\]; got 0 to 255"):
        ensemble._decode([torch.linspace(0, 255, 3 * 8 * 8).reshape(3, 8, 8)])
    with pytest.raises(AutoclsError, match=r"not a readable image"):
        (tmp_path / "x.png").write_bytes(b"junk")
        ensemble._decode([tmp_path / "x.png"])


def test_a_semicolon_csv_is_read_and_a_one_column_csv_is_explained(image_folder: Path) -> None:
    csv = image_folder / "labels.csv"
    csv.write_text("file;label\nclass_0/img 0.png;a\nclass_1/img 0.png;b\n")
    assert discover(csv).class_names == ("a", "b")
    csv.write_text("file\nclass_0/img 0.png\n")
    with pytest.raises(AutoclsError, match="found one column"):
        discover(csv)
