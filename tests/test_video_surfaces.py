"""Video through every surface, the context budget, and bad video files.

- Python API: options are checked per model (4.5 packing, 4.6 stack_frames), a context too small
  for the clip gets fewer frames with one notice and never overflows, a follow-up turn reuses
  the same units (KV cache hit, nothing encoded again);
- CLI: `run --video ... --packing --json` answers; a flag the model's recipe lacks exits 2 with one line;
- server: `video_url` as a data URI and as a --media-dir path through the official openai
  client; unknown and out-of-range video fields get a 400 naming them;
- bad files: no decodable frames, a zero-length clip, an empty file, frames over the pixel
  limit, a codec PyAV lacks, a file that is not a video: one line naming the file and problem.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from minicpmv_edge.edge_runtime.api import MiniCPMV
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.errors import ContextOverflowError, InputError, MediaError
from tests.runtime_helpers import make_video
from tests.test_server import MODEL, Server

FAMILY = "minicpmv-4.5"


@pytest.fixture(scope="module")
def res(store):
    return store.converted(FAMILY)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=48, fps=12, size=(160, 96))


def _video(path, **opts):
    return {"role": "user", "content": [dict(type="video", video=str(path), **opts), "What happens?"]}


def test_budget_packs_then_cuts_frames_with_one_notice(res, clip, caplog):
    """12 frames at 3 fps are 12 groups (803 tokens) by the card's own plan. A smaller context lowers
    MAX_NUM_FRAMES to the groups that fit, so the card's rule packs more frames per group; only past
    MAX_NUM_PACKING are frames dropped, with one notice. The prompt never exceeds the context."""
    def groups(m):
        return m.expand_videos(normalize([_video(clip, fps=3)], m.limits), reserve=8)[0].parts[0].frames

    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=1)
    assert [len(g.frames) for g in groups(m)] == [1] * 12 and m.last_notices == []
    m.close()
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=512, n_threads=1)
    assert [len(g.frames) for g in groups(m)] == [2] * 6 and m.last_notices == []
    r = m.chat([_video(clip, fps=3)], max_tokens=8, temperature=0)
    assert r.usage["prompt_tokens"] + 8 <= 512
    m.close()
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=256, n_threads=1)
    try:
        assert [len(g.frames) for g in groups(m)] == [3] * 3
        assert len(m.last_notices) == 1 and "12 frames at 3 fps do not fit the context" in m.last_notices[0]
        assert "9 frames in 3 groups" in m.last_notices[0] and "\n" not in m.last_notices[0]
        assert any(m.last_notices[0] in rec.message for rec in caplog.records)
        r = m.chat([_video(clip, fps=3)], max_tokens=8, temperature=0)
        assert r.usage["prompt_tokens"] + 8 <= 256
        with pytest.raises(ContextOverflowError, match="not even one video frame fits"):
            m.chat([_video(clip, fps=2)], max_tokens=200)
    finally:
        m.close()


def test_follow_up_turn_reuses_the_video(res, clip):
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=1)
    try:
        msgs = [_video(clip, fps=2, packing=2)]
        r = m.chat(msgs, max_tokens=4, temperature=0)
        encoded = m.counters.images_encoded
        assert encoded == 4  # 8 frames in 4 groups
        msgs += [{"role": "assistant", "content": r.text}, {"role": "user", "content": "And then?"}]
        m.chat(msgs, max_tokens=4, temperature=0)
        assert m.counters.images_encoded == encoded  # same units: nothing encoded again
        assert m.counters.prompt_tokens_reused >= 4 * 66
    finally:
        m.close()


def test_options_are_checked_per_model(res, clip, store):
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=1)
    try:
        with pytest.raises(InputError, match="stack_frames applies to the 4.6"):
            m.chat([_video(clip, stack_frames=3)], max_tokens=1)
        with pytest.raises(InputError, match="video max_packing must be an integer in 1..6, got 7"):
            normalize([_video(clip, max_packing=7)], m.limits)
        with pytest.raises(InputError, match="unknown video option 'speed'"):
            normalize([_video(clip, speed=2)], m.limits)
        with pytest.raises(InputError, match="video packing must be an integer in 1..6"):
            normalize([_video(clip, packing=2.5)], m.limits)
    finally:
        m.close()
    r46 = store.converted("minicpmv-4.6")
    m = MiniCPMV(r46.text_path, r46.mmproj_path, n_ctx=2048, n_threads=1)
    try:
        with pytest.raises(InputError, match="packing applies to MiniCPM-V 4.5"):
            m.chat([_video(clip, packing=2)], max_tokens=1)
        with pytest.raises(InputError, match="fps must be a whole number"):
            m.chat([_video(clip, fps=2.5)], max_tokens=1)
        with pytest.raises(InputError, match="video frames are images already"):
            m.chat([_video(clip, mode="images")], max_tokens=1)
    finally:
        m.close()


# --- bad files ------------------------------------------------------------------------------
def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_video_files(res, clip, tmp_path):
    import av

    from minicpmv_edge.edge_runtime.media import MediaLimits

    def ask(path, lim=MediaLimits()):
        return normalize([_video(path)], lim)

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty") as e:
        ask(empty)
    assert str(empty) in _one_line(e)

    zero = tmp_path / "zero.avi"  # a video stream without a single frame
    with av.open(str(zero), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    with pytest.raises(MediaError, match="no frames") as e:
        ask(zero)
    assert "zero.avi" in _one_line(e)

    broken = tmp_path / "broken.mkv"  # a fine container whose every packet is noise
    rng = np.random.default_rng(0)
    with av.open(str(broken), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
        for i in range(6):
            pkt = av.Packet(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
            pkt.stream, pkt.pts, pkt.dts, pkt.time_base = s, i, i, Fraction(1, 10)
            out.mux(pkt)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=1)
    try:  # probing reads the packets; decoding happens when the model expands the video
        with pytest.raises(MediaError, match="no frame could be decoded") as e:
            m.chat([_video(broken)], max_tokens=1)
        assert "broken.mkv" in _one_line(e)
    finally:
        m.close()

    with pytest.raises(MediaError, match="over the limit of 10000") as e:
        ask(clip, MediaLimits(max_pixels=10000))
    assert "160x96" in _one_line(e)

    huge = tmp_path / "huge.mkv"  # 4160x4096 = 17 M pixels, over the default 16.7 M limit
    with av.open(str(huge), "w") as out:
        s = out.add_stream("mpeg4", rate=1)
        s.width, s.height, s.pix_fmt = 4160, 4096, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((4096, 4160, 3), np.uint8), format="rgb24")
        for p in list(s.encode(frame)) + list(s.encode()):
            out.mux(p)
    with pytest.raises(MediaError, match="4160x4096") as e:
        ask(huge)
    _one_line(e)

    nocodec = tmp_path / "nocodec.mkv"
    nocodec.write_bytes(make_video(tmp_path / "v.mkv").read_bytes().replace(b"V_MPEG4/ISO/ASP", b"V_QQQQQ/ISO/ASP"))
    with pytest.raises(MediaError, match="no decoder") as e:
        ask(nocodec)
    _one_line(e)

    with pytest.raises(MediaError, match="not a readable video") as e:
        ask(Path(__file__))
    _one_line(e)


# --- CLI --------------------------------------------------------------------------------------
def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True, timeout=900)


def test_cli_video_flags(res, clip):
    folder = str(Path(res.text_path).parent)
    r = _cli("run", folder, "--video", str(clip), "--fps", "2", "--packing", "4", "--max-packing", "6", "-p",
             "What happens?", "-n", "2", "--temp", "0", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert 2 * 66 < out["usage"]["prompt_tokens"] < 3 * 66  # 8 frames in 2 groups of 4: 2 x 66 + text
    r = _cli("run", folder, "--video", str(clip), "--stack-frames", "3", "-p", "x", "-n", "1", "-t", "1")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "stack_frames applies to the 4.6" in lines[0], r.stderr


# --- server -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(res, clip, tmp_path_factory):
    media = tmp_path_factory.mktemp("vmedia")
    (media / "clip.mp4").write_bytes(clip.read_bytes())
    s = Server(Path(res.text_path).parent, tmp_path_factory.mktemp("vlog") / "server.log", "--media-dir", str(media),
               "--max-body-mb", "4")
    yield s
    s.stop()


def _vpart(url, **opts):
    return {"type": "video_url", "video_url": {"url": url}, **opts}


def test_server_video_url(srv, clip):
    uri = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    client = srv.client()
    a = client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, messages=[
        {"role": "user", "content": [_vpart(uri), {"type": "text", "text": "What happens?"}]}],
        extra_body={})
    b = client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, messages=[
        {"role": "user", "content": [_vpart("clip.mp4"), {"type": "text", "text": "What happens?"}]}])
    assert a.usage.prompt_tokens == b.usage.prompt_tokens > 12 * 64  # 12 frames at 3 fps, one group each
    assert a.choices[0].message.content == b.choices[0].message.content
    c = client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, messages=[
        {"role": "user", "content": [_vpart("clip.mp4", fps=3, packing=6, max_packing=6),
                                     {"type": "text", "text": "What happens?"}]}])
    assert c.usage.prompt_tokens == a.usage.prompt_tokens - 10 * 67  # 12 groups -> 2


def test_server_refuses_bad_video_fields(srv):
    msg = lambda part: {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": [part]}]}  # noqa: E731
    r = srv.post(msg(_vpart("clip.mp4", speed=2)))
    assert r.status_code == 400 and "speed" in r.json()["error"]["message"]
    r = srv.post(msg(_vpart("clip.mp4", packing=9)))
    assert r.status_code == 400 and "packing" in r.json()["error"]["message"]
    r = srv.post(msg(_vpart("clip.mp4", stack_frames=3)))
    assert r.status_code == 400 and "stack_frames" in r.json()["error"]["message"]
    r = srv.post(msg(_vpart("../etc/passwd")))
    assert r.status_code == 400
