"""Hostile input to the C bridge (mobile_bridge/, through ctypes): every call returns an error code
and a one-line message naming the problem, without hanging, aborting or decoding an oversized
picture; and Python and C refuse exactly the same images, from the one limits file both read
(minicpmv_edge/data/media_limits.h). Part of the hostile-input battery (tests/test_hostile_*.py)."""

from __future__ import annotations

import ctypes
import io
import os
import resource
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minicpmv_edge import limits
from minicpmv_edge.edge_runtime.media import load_image
from minicpmv_edge.errors import MediaError
from tests.test_hostile_runtime import png_bomb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
import mcv_bridge  # noqa: E402

OK, ERR_INVALID_ARG, ERR_IO, ERR_IMAGE = 0, -1, -2, -7


@pytest.fixture(scope="module")
def bridge():
    build = mcv_bridge.build("plain", jni=True, napi=True)  # the same build test_mobile_bridge.py uses
    lib = mcv_bridge.load_library(build / "libminicpmv_edge_bridge.so")
    lib.mcv_set_log_callback(None, None)
    return mcv_bridge.Bridge(lib)


@pytest.fixture(scope="module")
def session(bridge, store):
    res = store.converted("minicpmv-4.5")
    model = bridge.load(str(res.text_path), str(res.mmproj_path), n_ctx=2048, n_threads=2)
    s = bridge.session(model)
    yield s
    bridge.lib.mcv_session_free(s)
    bridge.lib.mcv_model_free(model)


def _err(bridge, s) -> str:
    return (bridge.lib.mcv_session_errmsg(s) or b"").decode()


def _call(fn, *args, timeout=20):
    """Run a bridge call on a thread: a call that blocks (a FIFO) fails the test instead of hanging it."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", fn(*args)), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(timeout)
    assert "rc" in out, f"the call did not return within {timeout} s"
    return out["rc"], time.monotonic() - t0


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_bridge_image_files(bridge, session, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    (tmp_path / "dir.png").mkdir()
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.write(_png(np.zeros((8, 8, 3), np.uint8)))
        f.truncate(limits.IMAGE_MAX_FILE_BYTES + 1)  # sparse: over the cap without writing 64 MiB
    (tmp_path / "empty.png").write_bytes(b"")
    cases = [("/dev/zero", ERR_IO, "is not a regular file"), (str(fifo), ERR_IO, "is not a regular file"),
             (str(tmp_path / "dir.png"), ERR_IO, "is a directory"),
             (str(tmp_path / "none.png"), ERR_IO, "image file does not exist"),
             (str(big), ERR_IMAGE, f"over the limit of {limits.IMAGE_MAX_FILE_BYTES}"),
             (str(tmp_path / "empty.png"), ERR_IMAGE, "image file is empty")]
    for path, code, needle in cases:
        rc, secs = _call(bridge.lib.mcv_session_add_image_file, session, path.encode())
        msg = _err(bridge, session)
        assert rc == code and needle in msg and "\n" not in msg, (path, rc, msg)
        assert secs < 10, (path, secs)  # /dev/zero is not read until memory runs out


def test_bridge_checks_the_header_before_decoding(bridge, session):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bomb = png_bomb(12000, 12000)  # 144 Mpx: ~430 MB of RGB if decoded
    rc, secs = _call(bridge.lib.mcv_session_add_image_bytes, session, bomb, len(bomb))
    msg = _err(bridge, session)
    assert rc == ERR_IMAGE and "12000x12000 = 144000000 pixels, over the limit of 16777216" in msg, msg
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000 and secs < 5  # KB: never decoded
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" \
           + b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60000, 60000) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    bmp = b"BM" + b"\0" * 12 + struct.pack("<iii", 40, 50000, -50000) + b"\0" * 64
    gif = b"GIF89a" + struct.pack("<HH", 60000, 1) + b"\0" * 20
    for data, needle in ((jpeg, "60000x60000"), (bmp, "50000x50000"), (gif, "60000x1")):
        rc, secs = _call(bridge.lib.mcv_session_add_image_bytes, session, data, len(data))
        msg = _err(bridge, session)
        assert rc == ERR_IMAGE and needle in msg and secs < 5, msg
    cut = _png(np.zeros((8, 8, 3), np.uint8))[:20]
    rc, _ = _call(bridge.lib.mcv_session_add_image_bytes, session, cut, len(cut))
    assert rc == ERR_IMAGE and "header is truncated or corrupt" in _err(bridge, session)


# the same pictures through Python and through C: one limit for both
SHAPES = [((2, 20000), "aspect ratio over 50:1"), ((20000, 2), "aspect ratio over 50:1"),
          ((100, 1), "both sides must be at least 2"), ((1, 1), "both sides must be at least 2"),
          ((4097, 4096), "over the limit of 16777216")]


@pytest.mark.parametrize("hw, needle", SHAPES, ids=[f"{h}x{w}" for (h, w), _ in SHAPES])
def test_python_and_c_refuse_the_same_images(bridge, session, hw, needle):
    h, w = hw
    rgb = np.zeros((h, w, 3), np.uint8)
    with pytest.raises(MediaError, match=needle.replace("(", r"\(")):
        load_image(rgb)
    png = _png(rgb)
    with pytest.raises(MediaError, match=needle.replace("(", r"\(")):
        load_image(png)
    rc, _ = _call(bridge.lib.mcv_session_add_image_bytes, session, png, len(png))
    assert rc == ERR_IMAGE and needle in _err(bridge, session), _err(bridge, session)
    rc, _ = _call(bridge.lib.mcv_session_add_image_rgb, session, rgb.tobytes(), w, h, 3 * w)
    assert rc == ERR_INVALID_ARG and needle in _err(bridge, session), _err(bridge, session)


def test_an_image_at_the_limit_is_accepted_by_both(bridge, session):
    bridge.check(bridge.lib.mcv_session_reset(session), session)
    side = int(limits.IMAGE_MAX_PIXELS ** 0.5)
    rgb = np.full((side, side, 3), 128, np.uint8)
    assert load_image(rgb).size == (side, side)
    rc, _ = _call(bridge.lib.mcv_session_add_image_rgb, session, rgb.tobytes(), side, side, 3 * side, timeout=120)
    assert rc == OK, _err(bridge, session)
    bridge.check(bridge.lib.mcv_session_reset(session), session)


def test_bridge_marker_without_an_image(bridge, session):
    bridge.check(bridge.lib.mcv_session_reset(session), session)
    bridge.check(bridge.lib.mcv_session_add_text(session, 1, b"look: <__media__> here"), session)
    rc, _ = bridge.generate(session, max_tokens=2)
    msg = _err(bridge, session)
    assert rc == ERR_INVALID_ARG and "media marker <__media__> without an image" in msg, (rc, msg)
    bridge.check(bridge.lib.mcv_session_reset(session), session)  # still usable
    bridge.check(bridge.lib.mcv_session_add_text(session, 1, b"hello"), session)
    rc, _ = bridge.generate(session, max_tokens=2)
    assert rc >= 0, _err(bridge, session)


def test_bridge_refuses_absurd_thread_counts(bridge, store):
    res = store.converted("minicpmv-4.5")
    with pytest.raises(mcv_bridge.BridgeError, match="n_threads must be <= 512") as exc:
        bridge.load(str(res.text_path), str(res.mmproj_path), n_threads=100000)
    assert exc.value.code == ERR_INVALID_ARG
    p = ctypes.c_void_p()
    assert bridge.lib.mcv_model_load(b"/dev/zero", None, None, ctypes.byref(p)) < 0 and not p.value
