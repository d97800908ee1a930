"""Hostile GGUF files, manifests, numbers, images, videos and content parts: each refused with
one line naming the file or field (exit 2 from the CLI, a typed error from Python), without
hanging, without llama.cpp aborting, and without decoding a picture that is too large
(part of the hostile-input battery, with test_hostile_*.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import struct
import time

import numpy as np
import pytest

from minicpmv_edge.errors import GGUFError, InputError, MediaError
from tests.hostile_helpers import assert_one_line_error, linked_copy, run_cli
from tests.runtime_helpers import noise_image

# --- GGUF files written byte by byte -------------------------------------------------------
U32, STR = 4, 8


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(version=3, kvs=(("general.architecture", STR, "qwen3"),), tensors=(("t", (32,), 0, 0),), data=b"\0" * 128,
         align=32) -> bytes:
    """A GGUF with chosen header fields; tensors are (name, ne, ggml type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, typ, val in kvs:
        out += _s(key) + struct.pack("<I", typ) + (_s(val) if typ == STR else struct.pack("<I", val))
    for name, ne, typ, off in tensors:
        out += _s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", typ, off)
    out += b"\0" * (-len(out) % align)
    return out + data


GGUFS = [
    ("version-99", gguf(version=99), "GGUF version 99 is not supported"),
    ("version-1", gguf(version=1), "GGUF version 1 is not supported"),
    ("offset-gap", gguf(tensors=(("t", (32,), 0, 64),)), "has data offset 64, expected 0"),
    ("offset-past-eof", gguf(tensors=(("t", (32,), 0, 0),), data=b"\0" * 16), "truncated: tensor 't' ends at byte"),
    ("ggml-type-99", gguf(tensors=(("t", (32,), 99, 0),)), "invalid ggml type 99"),
    ("five-dims", gguf(tensors=(("t", (2, 2, 2, 2, 2), 0, 0),)), "5 dimensions"),
    ("duplicate-key", gguf(kvs=(("general.architecture", STR, "a"), ("general.architecture", STR, "b"))),
     "duplicate metadata key 'general.architecture'"),
    ("alignment-3", gguf(kvs=(("general.architecture", STR, "a"), ("general.alignment", U32, 3))),
     "general.alignment 3 is not a power of 2"),
    ("alignment-string", gguf(kvs=(("general.alignment", STR, "32"),)), "general.alignment must be a UINT32"),
    ("row-not-blocks", gguf(tensors=(("t", (10,), 2, 0),)), "not a multiple of its type's block size 32"),
    ("duplicate-tensor", gguf(tensors=(("t", (8,), 0, 0), ("t", (8,), 0, 32))), "duplicate tensor name 't'"),
    ("bad-magic", b"GGUX" + gguf()[4:], "not a GGUF file (bad magic)"),
    ("empty", b"", "is empty, not a GGUF file"),
    ("header-cut", gguf()[:30], "truncated or corrupt GGUF header"),
]


@pytest.mark.parametrize("case, data, needle", GGUFS, ids=[g[0] for g in GGUFS])
def test_hostile_gguf_refused_by_inspect_and_runtime_alike(tmp_path, case, data, needle):
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    rc, _, err = run_cli("inspect", path)  # inspect never says OK to a file the runtime refuses
    assert_one_line_error(rc, err, path.name, needle)
    rc, _, err = run_cli("chat", "-m", path, "-p", "hi")
    assert_one_line_error(rc, err, path.name, needle)


def test_hostile_gguf_truncated_real_model(store, tmp_path):
    res = store.converted("minicpmv-4.5")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(res.text_path.read_bytes()[: res.text_path.stat().st_size // 2])
    rc, _, err = run_cli("inspect", cut)
    assert_one_line_error(rc, err, "cut.gguf", "truncated: tensor")
    from minicpmv_edge.edge_runtime import MiniCPMV

    with pytest.raises(GGUFError, match="truncated: tensor"):
        MiniCPMV(cut, res.mmproj_path)


def test_hostile_gguf_special_files(tmp_path):
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    (tmp_path / "dir.gguf").mkdir()
    for path, needle in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                         (tmp_path / "dir.gguf", "is a directory"), (tmp_path / "none.gguf", "does not exist")):
        t0 = time.monotonic()
        rc, _, err = run_cli("quantize", path, tmp_path / "q.gguf", "Q8_0")
        assert_one_line_error(rc, err, needle)
        assert not (tmp_path / "q.gguf").exists()
        assert time.monotonic() - t0 < 10  # a FIFO or /dev/zero must not block or be read forever


# --- manifest.json ----------------------------------------------------------------------------
def _manifest_cases(res):
    m = json.loads((res.text_path.parent / "manifest.json").read_text())
    return [
        ("array", "[1]", "a JSON list, expected an object"),
        ("not-json", "{manifest", "not UTF-8 JSON"),
        ("text-number", json.dumps({**m, "text": 5}), "'text' must be a string, got int"),
        ("files-list", json.dumps({**m, "files": []}), "'files' must be an object"),
        ("text-parent", json.dumps({**m, "text": "../models/x.gguf"}), "not a file name inside the folder"),
        ("mmproj-absolute", json.dumps({**m, "mmproj": "/etc/passwd"}), "not a file name inside the folder"),
        ("text-missing", json.dumps({**m, "text": "gone.gguf"}), "'gone.gguf' as the text file but it is not in the folder"),
    ]


def test_hostile_manifests(store, tmp_path):
    res = store.converted("minicpmv-4.5")
    for case, text, needle in _manifest_cases(res):
        folder = linked_copy(res.text_path.parent, tmp_path / case, {"manifest.json": text})
        rc, _, err = run_cli("run", folder, "-p", "hi")
        assert_one_line_error(rc, err, needle)
        rc, _, err = run_cli("inspect", folder)
        assert_one_line_error(rc, err, needle)


# --- numbers and load options -------------------------------------------------------------
@pytest.fixture(scope="module")
def m45(store):
    from minicpmv_edge.edge_runtime import MiniCPMV

    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=1024, n_threads=2)
    yield res, m
    m.close()


def test_hostile_context_sizes(m45):
    res, _ = m45
    folder = res.text_path.parent
    t0 = time.monotonic()
    rc, _, err = run_cli("run", folder, "-c", "1000000000", "-p", "hi")
    assert_one_line_error(rc, err, "-c", "GiB of KV cache", "use a smaller -c")
    assert time.monotonic() - t0 < 15  # refused from an estimate, not after allocating ~20 GB
    from minicpmv_edge.edge_runtime import MiniCPMV

    for bad in (-1, "big", 1.5, 10):
        with pytest.raises(InputError, match="n_ctx"):
            MiniCPMV(res.text_path, res.mmproj_path, n_ctx=bad)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=0, n_threads=1)  # 0: the training context, as llama.cpp
    from minicpmv_edge.gguf_info import read_info

    train = read_info(res.text_path).get("qwen3.context_length")
    assert m.options.n_ctx == train and m._ctx.n_ctx == train
    m.close()


def test_hostile_threads_and_gpu_flags(m45):
    res, _ = m45
    from minicpmv_edge.edge_runtime import MiniCPMV
    from minicpmv_edge.edge_runtime.engine import _llama

    for bad in (0, 100000, -3, True):
        with pytest.raises(InputError, match="n_threads"):
            MiniCPMV(res.text_path, res.mmproj_path, n_threads=bad)
    gpu = bool(_llama().llama_supports_gpu_offload())
    for argv in (["-ngl", "4"], ["--mmproj-gpu"]):
        rc, out, err = run_cli("run", res.text_path.parent, *argv, "-p", "hi", "-n", "1", "-t", "1")
        if gpu:  # a GPU build takes them
            assert rc == 0, err
        else:  # a CPU-only build says so instead of silently ignoring them
            assert_one_line_error(rc, err, "GPU backend", "CPU-only")


# --- images, video, content parts -----------------------------------------------------------
def _png(w, h) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(noise_image(w, h)).save(buf, "PNG")
    return buf.getvalue()


def png_bomb(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h pixels, with one tiny compressed row: decoding it would
    allocate w*h*3 bytes; checking the header first costs nothing."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _ask(m, part):
    return m.chat([{"role": "user", "content": [part, "What is it?"]}], max_tokens=1, temperature=0)


def test_hostile_image_files(m45, tmp_path):
    _, m = m45
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    (tmp_path / "dir.png").mkdir()
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: over the 64 MiB file cap without writing it
        f.write(_png(8, 8))
        f.truncate((64 << 20) + 1)
    (tmp_path / "cut.png").write_bytes(_png(64, 64)[:100])
    cases = [("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (tmp_path / "dir.png", "is a directory"),
             (big, "over the limit of 67108864"), (tmp_path / "none.png", "does not exist"),
             (tmp_path / "cut.png", "not a readable image")]
    for path, needle in cases:
        t0 = time.monotonic()
        with pytest.raises(MediaError, match=needle):
            _ask(m, {"type": "image", "image": str(path)})
        assert time.monotonic() - t0 < 10
    res, _ = m45
    rc, _, err = run_cli("run", res.text_path.parent, "--image", "/dev/zero", "-p", "hi")
    assert_one_line_error(rc, err, "/dev/zero", "not a regular file")


def test_hostile_image_sizes(m45, tmp_path):
    _, m = m45
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(12000, 12000))  # 144 Mpx: ~430 MB if decoded
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MediaError, match="144000000 pixels, over the limit of 16777216"):
        _ask(m, {"type": "image", "image": str(bomb)})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000  # KB: it was never decoded
    with pytest.raises(MediaError, match="aspect ratio over 50:1"):
        _ask(m, {"type": "image", "image": np.zeros((2, 20000, 3), np.uint8)})
    with pytest.raises(MediaError, match="both sides must be at least 2"):
        _ask(m, {"type": "image", "image": np.zeros((100, 1, 3), np.uint8)})
    with pytest.raises(MediaError, match="HxWx3 uint8"):
        _ask(m, {"type": "image", "image": np.zeros((10, 10), np.float32)})


def test_hostile_data_urls(m45):
    _, m = m45
    with pytest.raises(MediaError, match="base64"):
        _ask(m, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}})
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all" * 10).decode()
    with pytest.raises(MediaError) as exc:
        _ask(m, {"type": "image_url", "image_url": {"url": garbage}})
    assert "not a readable image" in str(exc.value) and "object at 0x" not in str(exc.value)
    assert str(exc.value).startswith("data URL: ")


CONTENT_PARTS = [
    ({"type": "image", "image": 12345}, InputError, "an image must be a path, URL, data URL, bytes"),
    ({"type": "image_url", "image_url": {"url": None}}, InputError, "image part has no url"),
    ({"type": "video"}, InputError, "a video part needs a file path in 'video', got nothing"),
    ({"type": "video", "video": 42}, InputError, "got int"),
    ({"type": "video", "video": "clip.mp4", "fps": "fast"}, InputError, "video fps must be a number"),
    ({"type": "video", "video": "clip.mp4", "fps": float("nan")}, InputError, "video fps must be"),
    ({"type": "video", "video": "clip.mp4", "fps": -1}, InputError, "video fps must be"),
    ({"type": "video", "video": "clip.mp4", "max_frames": 0}, InputError, "max_frames must be an integer in 1..1024"),
    ({"type": "video", "video": "clip.mp4", "max_frames": 2.5}, InputError, "max_frames must be"),
    ({"type": "video", "video": "/dev/zero"}, MediaError, "not a regular file"),
    ({"type": "audio", "audio": "x.wav"}, InputError, "unknown content part type 'audio'"),
    ({"type": "text", "text": 5}, InputError, "text part needs a string"),
    (3.14, InputError, "unsupported content item of type float"),
]


@pytest.mark.parametrize("part, error, needle", CONTENT_PARTS, ids=[str(i) for i in range(len(CONTENT_PARTS))])
def test_hostile_content_parts(m45, part, error, needle):
    _, m = m45
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _ask(m, part)


def test_hostile_video_file_and_marker(m45, tmp_path):
    _, m = m45
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\0\0\0 ftypisom" + os.urandom(2000))
    with pytest.raises(MediaError, match="clip.mp4: not a readable video|clip.mp4: file has no video stream|clip.mp4: cannot decode"):
        _ask(m, {"type": "video", "video": str(bad)})
    # the media marker is reserved for images: in user text it is refused, naming it
    with pytest.raises(InputError, match="media marker '<__media__>'"):
        m.chat([{"role": "user", "content": "look: <__media__>"}], max_tokens=1)
    assert m.chat([{"role": "user", "content": "fine"}], max_tokens=1).finish_reason in ("stop", "length")
