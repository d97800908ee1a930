"""Bad input to the runtime: typed exceptions (one hierarchy) and one-line CLI errors, never a crash."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.media import MediaLimits, load_image
from minicpmv_edge.errors import ContextOverflowError, EdgeError, GGUFError, InputError, MediaError, MismatchError
from tests.runtime_helpers import make_video, noise_image


@pytest.fixture(scope="module")
def m45(store):
    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=256, n_threads=2, image_max_pixels=2_000_000)
    yield res, m
    m.close()


def ask(m, *content, **kw):
    return m.chat([{"role": "user", "content": list(content)}], temperature=0, max_tokens=4, **kw)


def test_mismatched_mmproj_is_refused_before_llama_cpp(store):
    t45, t26 = store.converted("minicpmv-4.5"), store.converted("minicpmv-2.6")
    with pytest.raises(MismatchError) as e:
        MiniCPMV(t45.text_path, t26.mmproj_path)
    assert "minicpmv-2.6-mmproj" in str(e.value) and "projector version" in str(e.value)
    t46 = store.converted("minicpmv-4.6")
    with pytest.raises(MismatchError):
        MiniCPMV(t46.text_path, t45.mmproj_path)
    r = subprocess.run([sys.executable, "-m", "minicpmv_edge", "chat", "-m", str(t45.text_path), "--mmproj",
                        str(t26.mmproj_path), "-p", "hi"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "does not fit" in r.stderr


def test_files_that_are_not_ours(tmp_path, store):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(GGUFError, match="not a GGUF"):
        MiniCPMV(junk)
    from gguf import GGUFWriter

    plain = tmp_path / "plain.gguf"
    w = GGUFWriter(plain, "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match="convert the checkpoint"):
        MiniCPMV(plain)
    with pytest.raises(GGUFError, match="does not exist"):
        MiniCPMV(tmp_path / "missing.gguf")


def test_prompt_over_the_context(m45):
    res, m = m45
    with pytest.raises(ContextOverflowError, match="context holds 256"):
        ask(m, "word " * 400)
    assert ask(m, "still works").finish_reason in ("stop", "length")


def test_corrupt_and_unreadable_images(m45, tmp_path):
    res, m = m45
    good = io.BytesIO()
    Image.fromarray(noise_image(64, 64)).save(good, "PNG")
    with pytest.raises(MediaError, match="not a readable image"):
        ask(m, good.getvalue()[:200], "?")  # truncated PNG
    with pytest.raises(MediaError, match="not a readable image"):
        ask(m, b"\x00garbage" * 50, "?")
    with pytest.raises(MediaError, match="does not exist"):
        ask(m, {"type": "image", "image": str(tmp_path / "none.png")}, "?")
    with pytest.raises(MediaError, match="base64"):
        ask(m, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "?")


def test_pixel_limit_and_decompression_bomb(m45, tmp_path):
    res, m = m45
    with pytest.raises(MediaError, match="over the limit"):
        ask(m, Image.fromarray(noise_image(2000, 1200)), "?")  # limit is 2,000,000 here
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb, optimize=True)  # tiny file, 400 Mpx
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(MediaError, match="pixel"):
        load_image(bomb, MediaLimits(max_pixels=50_000_000))


def test_extreme_aspect_ratio(m45):
    res, m = m45
    with pytest.raises(MediaError, match="aspect ratio"):
        ask(m, Image.fromarray(noise_image(4000, 2)), "?")  # 2000:1 (a 1-pixel side is refused first)


def test_odd_image_modes_are_converted(m45, tmp_path):
    res, m = m45
    rgb = noise_image(120, 80, 2)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    pal = Image.fromarray(rgb).convert("P")
    i16 = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit grey
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    for im in (cmyk, pal, i16, rgba):
        out = load_image(im)
        assert out.rgb.shape == (80, 120, 3) and out.rgb.dtype == np.uint8
    # EXIF orientation 6 (rotate 90 cw): a 120x80 JPEG must come out 80x120
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(rgb).save(path, exif=exif)
    assert load_image(path).size == (80, 120)
    assert ask(m, {"type": "image", "image": str(path)}, "?").usage["prompt_tokens"] > 64


def test_video_without_a_decoder(m45, tmp_path):
    res, m = m45
    good = make_video(tmp_path / "v.mkv")
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(good.read_bytes().replace(b"V_MPEG4/ISO/ASP", b"V_QQQQQ/ISO/ASP"))
    with pytest.raises(MediaError, match="no decoder"):
        ask(m, {"type": "video", "video": str(bad)}, "?")
    with pytest.raises(MediaError, match="not a readable video"):
        ask(m, {"type": "video", "video": str(Path(__file__))}, "?")


def test_bad_arguments(m45):
    res, m = m45
    with pytest.raises(InputError):
        m.chat([], temperature=0)
    with pytest.raises(InputError, match="role"):
        m.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(InputError, match="top_p"):
        ask(m, "hi", top_p=1.5)
    with pytest.raises(InputError, match="last message"):
        m.chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert all(issubclass(e, EdgeError) for e in (MediaError, MismatchError, ContextOverflowError, GGUFError))


def test_cli_reports_one_line(store, tmp_path):
    res = store.converted("minicpmv-4.5")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG garbage")
    r = subprocess.run([sys.executable, "-m", "minicpmv_edge", "run", str(res.text_path.parent), "--image",
                        str(junk), "-p", "hi", "-t", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "junk.png" in r.stderr
