"""Hostile input: every case gives one clear per-file record and the run goes on."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

import recapfast.engine.screen.files as screen_files
from recapfast.engine.screen import ScreenConfig, iter_screen_files, screen_folder

from screen_helpers import bomb_png, jpeg_bytes, png_bytes, read_jsonl

RNG = np.random.default_rng(11)


def rgb(h=80, w=96):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One folder holding every hostile case; returns (root, {case: file name})."""
    root = tmp_path_factory.mktemp("hostile") / "in"
    root.mkdir()
    good_png, good_jpg = png_bytes(rgb()), jpeg_bytes(rgb())
    files = {}

    def put(case, name, data):
        (root / name).write_bytes(data)
        files[case] = name

    put("good", "a_good.png", good_png)
    put("truncated_png", "b_truncated.png", good_png[: len(good_png) // 2])
    put("truncated_jpeg", "c_truncated.jpg", good_jpg[: len(good_jpg) // 2])
    put("corrupt_png", "d_corrupt.png", good_png[:16] + b"\x00garbage" * 50 + good_png[-12:])
    put("corrupt_jpeg", "e_corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(RNG.integers(0, 256, 400, dtype=np.uint8)))
    put("zero_byte", "f_empty.png", b"")
    put("text_as_png", "g_text.png", b"this is a text file, not an image\n")
    put("bomb", "h_bomb.png", bomb_png())
    put("too_small", "i_small.png", png_bytes(rgb(10, 12)))
    # 16-bit grey, palette, CMYK, LA, RGBA
    deep = (RNG.integers(0, 65536, (70, 70))).astype(np.uint16)
    Image.fromarray(deep).save(root / "j_16bit.png")
    files["16bit"] = "j_16bit.png"
    Image.fromarray(rgb()).convert("P", palette=Image.ADAPTIVE).save(root / "k_palette.png")
    files["palette"] = "k_palette.png"
    Image.fromarray(rgb()).convert("CMYK").save(root / "l_cmyk.jpg")
    files["cmyk"] = "l_cmyk.jpg"
    Image.fromarray(RNG.integers(0, 256, (64, 70, 2), dtype=np.uint8), mode="LA").save(root / "m_la.png")
    files["la"] = "m_la.png"
    Image.fromarray(RNG.integers(0, 256, (64, 70, 4), dtype=np.uint8), mode="RGBA").save(root / "n_rgba.png")
    files["rgba"] = "n_rgba.png"
    frames = [Image.fromarray(rgb(66, 66)).convert("P") for _ in range(3)]
    frames[0].save(root / "o_anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["gif"] = "o_anim.gif"
    pages = [Image.fromarray(rgb(64, 80)) for _ in range(2)]
    pages[0].save(root / "p_pages.tif", save_all=True, append_images=pages[1:])
    files["tiff"] = "p_pages.tif"
    # EXIF orientation 6 (rotate 90): a 64 x 96 (h x w) stored image is 96 x 64 upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb(64, 96)).save(root / "q_exif.jpg", exif=exif.tobytes())
    files["exif"] = "q_exif.jpg"
    os.symlink(root / "missing_target.png", root / "r_broken.png")
    files["broken_symlink"] = "r_broken.png"
    os.symlink(root / "s_loop2.png", root / "s_loop1.png")
    os.symlink(root / "s_loop1.png", root / "s_loop2.png")
    files["symlink_loop"] = "s_loop1.png"
    files["symlink_loop_2"] = "s_loop2.png"
    bad_name = os.fsencode(str(root)) + b"/t_caf\xe9_\xff.png"     # Latin-1 bytes: not UTF-8
    with open(bad_name, "wb") as fh:
        fh.write(good_png)
    files["non_utf8"] = os.fsdecode(bad_name)[len(str(root)) + 1:]
    os.mkfifo(root / "u_fifo.png")
    files["fifo"] = "u_fifo.png"
    put("too_many_pixels", "v_large.png", png_bytes(rgb(200, 300)))
    put("good_last", "z_good.png", good_png)
    return root, files


@pytest.fixture(scope="module")
def records(hostile, tiny, tmp_path_factory):
    root, files = hostile
    out = tmp_path_factory.mktemp("hostile_out") / "r.jsonl"
    result = screen_folder(tiny, root, out, ScreenConfig(size=32, probe_eps=(1,), max_pixels=200 * 299))
    raw = out.read_bytes()
    raw.decode("utf-8")                        # strictly valid UTF-8
    recs = read_jsonl(out)
    by_name = {}
    for r in recs:
        path = os.fsdecode(bytes.fromhex(r["path_hex"])) if "path_hex" in r else r["path"]
        by_name[path[len(str(root)) + 1:]] = r
    return {case: by_name[name] for case, name in files.items()}, result.summary, recs


@pytest.mark.parametrize("case,code,reason", [
    ("truncated_png", "truncated", "truncated"),
    ("truncated_jpeg", "truncated", "truncated"),
    ("corrupt_png", "undecodable", ""),
    ("corrupt_jpeg", "truncated", "truncated or corrupt"),       # libjpeg runs out of data
    ("zero_byte", "empty_file", "0 bytes"),
    ("text_as_png", "undecodable", "not a decodable image"),
    ("bomb", "decompression_bomb", "decompression bomb"),
    ("too_small", "too_small", "smaller than the 32x32"),
    ("too_many_pixels", "too_many_pixels", "exceeds the pixel limit of 59800"),
    ("broken_symlink", "broken_symlink", "broken symbolic link"),
    ("symlink_loop", "symlink_loop", "loop"),
    ("fifo", "not_a_regular_file", "not a regular file"),
])
def test_unusable_files_get_an_error_record(records, case, code, reason):
    r = records[0][case]
    assert r["error"] == code, r
    assert reason in r["reason"]
    assert "p_recaptured" not in r


@pytest.mark.parametrize("case,note,size", [
    ("16bit", "16-bit scaled to 8-bit", (70, 70)),
    ("palette", "palette converted", (96, 80)),
    ("cmyk", "CMYK converted to RGB", (96, 80)),
    ("la", "alpha dropped", (70, 64)),
    ("rgba", "alpha dropped", (70, 64)),
    ("gif", "first of 3 frames", (66, 66)),
    ("tiff", "first of 2 frames", (80, 64)),
    ("exif", "EXIF orientation 6 applied", (64, 96)),
])
def test_converted_files_are_screened_and_say_so(records, case, note, size):
    r = records[0][case]
    assert "error" not in r, r
    assert note in r["notes"]
    assert (r["width"], r["height"]) == size
    assert r["decision"] in ("original", "recaptured") and 0 <= r["p_recaptured"] <= 1


def test_non_utf8_name_is_valid_json_and_round_trips(records, hostile):
    root, files = hostile
    r = records[0]["non_utf8"]
    assert "error" not in r
    assert r["path"].endswith("t_caf\\xe9_\\xff.png")          # readable, valid Unicode
    assert bytes.fromhex(r["path_hex"]) == os.fsencode(str(root)) + b"/t_caf\xe9_\xff.png"   # exact bytes


def test_run_goes_on_and_summary_counts_errors_by_reason(records, hostile):
    by_case, summary, recs = records
    root, files = hostile
    assert len(recs) == len(files) == len(list(iter_screen_files(root)))
    assert recs[-1]["path"].endswith("z_good.png") and "error" not in recs[-1]
    errors = summary["errors_by_reason"]
    assert errors["undecodable"] == 2 and errors["truncated"] == 3 and errors["empty_file"] == 1 and errors["decompression_bomb"] == 1
    assert errors["symlink_loop"] == 2 and errors["broken_symlink"] == 1
    assert summary["errors"] == sum(errors.values()) == 13
    assert summary["screened"] == len(files) - 13


def test_unreadable_permission_gives_an_error_record(tiny, tmp_path, monkeypatch):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(png_bytes(rgb()))
    real = screen_files.read_file

    def denied(path, *args):  # root reads chmod-000 files, so the denial is simulated at the open
        if path.endswith("b.png"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, *args)

    monkeypatch.setattr(screen_files, "read_file", denied)
    out = tmp_path / "r.jsonl"
    screen_folder(tiny, root, out, ScreenConfig(size=32, probe_eps=()))
    recs = read_jsonl(out)
    assert [r.get("error") for r in recs] == [None, "permission_denied", None]
    assert recs[1]["bytes"] is not None       # stat worked; the key for --resume is complete


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files; covered by the simulated test above")
def test_unreadable_permission_real_chmod(tiny, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(rgb()))
    (root / "a.png").chmod(0)
    out = tmp_path / "r.jsonl"
    screen_folder(tiny, root, out, ScreenConfig(size=32, probe_eps=()))
    assert read_jsonl(out)[0]["error"] == "permission_denied"


def test_path_vanishing_mid_run(tiny, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(png_bytes(rgb()))

    def listing():  # b.png is listed, then deleted before it is read
        for path in iter_screen_files(root):
            if path.endswith("b.png"):
                os.remove(path)
            yield path

    out = tmp_path / "r.jsonl"
    screen_folder(tiny, root, out, ScreenConfig(size=32, probe_eps=()), paths=listing())
    recs = read_jsonl(out)
    assert [r.get("error") for r in recs] == [None, "vanished", None]
    assert "vanished" in recs[1]["reason"]


def test_hostile_folder_through_the_cli_with_workers(hostile, tmp_path):
    """The same folder through `python -m recapfast screen` with 2 decode workers: exit 0, same records."""
    from screen_helpers import cli, save_tiny_model

    root, files = hostile
    model = save_tiny_model(tmp_path / "m.safetensors")
    out = tmp_path / "r.jsonl"
    res = cli("screen", root, "--out", out, "--model", model, "--size", 32, "--probe-eps", "none",
              "--device", "cpu", "--workers", 2, "--max-pixels", 200 * 299, "--quiet")
    assert res.returncode == 0, res.stderr
    recs = read_jsonl(out)
    assert len(recs) == len(files)
    assert json.loads((tmp_path / "r.summary.json").read_text())["errors"] == 13
    assert f"{len(files)} file(s): {len(files) - 13} screened, 13 error(s)" in res.stdout
    paths = [r["path"] for r in recs]
    assert paths == sorted(paths, key=lambda p: p)
