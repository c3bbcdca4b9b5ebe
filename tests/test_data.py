"""Discovery, decoding conversions, patching, and broken files."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from recapfast.data.folder import (DataError, DecodeError, PatchDataset, Sample, collate, decode, discover, iter_images,
                            to_patches)

from conftest import save_png


def test_discovery_is_sorted_recursive_and_case_insensitive(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for rel in ["original/b.PNG", "original/a/z.jpg", "original/a/y.TIFF", "recaptured/c.webp", "recaptured/d.bmp"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {"png": "PNG", "jpg": "JPEG", "tiff": "TIFF", "webp": "WEBP", "bmp": "BMP"}[rel.rsplit(".", 1)[1].lower()]
        Image.fromarray(img).save(path, format=fmt)
    (tmp_path / "original" / "readme.txt").write_text("not an image")
    samples = discover(tmp_path)
    rels = [(s.path[len(str(tmp_path)) + 1:], s.label) for s in samples]
    assert rels == [("original/a/y.TIFF", 0), ("original/a/z.jpg", 0), ("original/b.PNG", 0),
                    ("recaptured/c.webp", 1), ("recaptured/d.bmp", 1)]
    assert len(list(iter_images(tmp_path))) == 5


def test_discovery_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        discover(tmp_path / "missing")
    with pytest.raises(DataError, match="original/ or recaptured/"):
        discover(tmp_path)
    (tmp_path / "original").mkdir()
    with pytest.raises(DataError, match="no image files"):
        discover(tmp_path)


def test_grey_is_replicated_and_alpha_dropped(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    arr, notes = decode(save_png(tmp_path / "g.png", grey))
    assert arr.shape == (10, 12, 3) and all(np.array_equal(arr[..., c], grey) for c in range(3))
    assert "grey replicated to RGB" in notes
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    arr, notes = decode(save_png(tmp_path / "a.png", rgba))
    assert np.array_equal(arr, rgba[..., :3]) and "alpha dropped" in notes


def test_16bit_palette_cmyk_and_exif_rotation(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    arr, notes = decode(tmp_path / "deep.png")
    assert arr[0, :, 0].tolist() == [0, 1, 255, 128] and "16-bit scaled to 8-bit" in notes
    pal = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, mode="L").convert("P")
    pal.save(tmp_path / "pal.png")
    arr, notes = decode(tmp_path / "pal.png")
    assert arr.shape == (4, 4, 3) and "palette converted" in notes
    Image.new("CMYK", (5, 6), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    arr, notes = decode(tmp_path / "cmyk.jpg")
    assert arr.shape == (6, 5, 3) and any("CMYK" in n for n in notes)
    img = Image.fromarray(np.zeros((4, 8, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    arr, _ = decode(tmp_path / "rot.jpg")
    assert arr.shape == (8, 4, 3)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, I am text\n", "not a decodable image"),
])
def test_broken_files_raise_decode_error(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode(path)


def test_truncated_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        with pytest.raises(DecodeError):
            decode(path)


def test_center_crop_and_tiles():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    crop = to_patches(img, 3)
    assert crop.shape == (1, 3, 3, 3)
    assert torch.equal(crop[0], torch.from_numpy(img[1:4, 2:5]).permute(2, 0, 1))
    tiles = to_patches(img, 2, tile=True)
    assert tiles.shape == (6, 3, 2, 2)  # 2 rows x 3 cols, row-major from the top-left
    assert torch.equal(tiles[4], torch.from_numpy(img[2:4, 2:4]).permute(2, 0, 1))
    with pytest.raises(DecodeError, match="smaller than the 8x8 patch"):
        to_patches(img, 8)


def test_dataset_reports_bad_files_and_collates_the_rest(tmp_path):
    rng = np.random.default_rng(3)
    good = save_png(tmp_path / "good.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    small = save_png(tmp_path / "small.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    ds = PatchDataset([Sample(str(good), 1), Sample(str(bad), 0), Sample(str(small), 0)], size=8)
    batch = collate([ds[i] for i in range(3)])
    assert batch.x.shape == (1, 3, 8, 8) and batch.y.tolist() == [1] and batch.files == [0]
    assert [i for i, _ in batch.errors] == [1, 2]
    assert "smaller" in batch.errors[1][1]
