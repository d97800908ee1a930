"""A video file probed and decoded with PyAV, only the frames a recipe picks.

What the video recipes need is what decord's VideoReader gives the model cards: the number of
frames (`len(vr)`), the average frame rate (`get_avg_fps()`), and frames by index in decode
order. Probing counts the stream's packets without decoding them; decoding converts to RGB only
the picked frames, so a long 720p clip never sits in memory whole. Every problem is one line
naming the file: no video stream, a codec PyAV cannot decode, no decodable frame, a zero-length
clip, a frame size over the pixel limit.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minicpmv_edge.errors import MediaError

from .media import MediaLimits, _check_file

MAX_FILE_BYTES = 1 << 40  # frames are decoded one at a time: the file size itself needs no tight cap


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int  # decodable frames in decode order (decord: len(vr))
    fps: float  # average frame rate (decord: get_avg_fps())
    width: int
    height: int
    label: str

    @property
    def duration(self) -> float:
        """Seconds, as the model cards compute it: len(vr) / fps."""
        return self.n_frames / self.fps


def _av():
    from minicpmv_edge.extras import need

    return need("av", "video", "video input")


class VideoSource:
    """A video given as a path or as bytes (a data: URI's payload)."""

    def __init__(self, src, limits: MediaLimits = MediaLimits(), label: str | None = None):
        self.limits = limits
        if isinstance(src, (bytes, bytearray, memoryview)):
            self._bytes, self.path = bytes(src), None
            self.label = label or "video data"
            if not self._bytes:
                raise MediaError("video data is empty", self.label)
        else:
            self._bytes, self.path = None, Path(src)
            self.label = label or str(src)
            _check_file(self.path, MAX_FILE_BYTES, "video", self.label)  # regular file, not a device or FIFO
            if self.path.stat().st_size == 0:
                raise MediaError("video file is empty (zero bytes)", self.label)
        self.info = self._probe()

    @property
    def key(self) -> str:
        """Identity of the content, for the expansion cache (video.py)."""
        if self._bytes is not None:
            return "bytes:" + hashlib.blake2b(self._bytes, digest_size=16).hexdigest()
        st = self.path.stat()
        return f"file:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def _open(self):
        av = _av()
        target = io.BytesIO(self._bytes) if self._bytes is not None else str(self.path)
        try:
            return av.open(target)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"not a readable video ({str(exc)[:80]})", self.label) from None

    def _stream(self, container):
        streams = container.streams.video
        if not streams:
            raise MediaError("file has no video stream", self.label)
        stream = streams[0]
        try:
            cc = stream.codec_context  # None (or an error, by PyAV version) when FFmpeg has no decoder
        except Exception as exc:  # noqa: BLE001 - PyAV raises several types here
            raise MediaError(f"no decoder for this video's codec ({exc})", self.label) from None
        if cc is None:
            tag = getattr(getattr(stream, "codec_tag", None), "strip", lambda: "")() or "unknown"
            raise MediaError(f"no decoder for this video's codec ({tag})", self.label)
        return stream

    def _probe(self) -> VideoInfo:
        av = _av()
        with self._open() as container:
            stream = self._stream(container)
            cc = stream.codec_context
            w, h = int(cc.width or 0), int(cc.height or 0)
            if w * h > self.limits.max_pixels:
                raise MediaError(f"video frames are {w}x{h} = {w * h} pixels, over the limit of "
                                 f"{self.limits.max_pixels}", self.label)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            try:
                n = sum(1 for p in container.demux(stream) if p.size)
            except av.error.FFmpegError as exc:
                raise MediaError(f"cannot read the video's packets ({str(exc)[:80]})", self.label) from None
        if n == 0:
            raise MediaError("video has no frames (zero-length clip)", self.label)
        fps = float(rate) if rate else 0.0
        if not fps > 0:
            raise MediaError("video has no frame rate", self.label)
        return VideoInfo(n, fps, w, h, self.label)

    def frames(self, indices) -> list[np.ndarray]:
        """RGB uint8 frames at these decode-order indices (repeats allowed), in the given order.
        An index past the last decodable frame takes the last one (a stream whose packet count
        overstates its frames)."""
        av = _av()
        want = set(int(i) for i in indices)
        top = max(want)
        got: dict[int, np.ndarray] = {}
        tail = None  # the last decoded frame, converted only when an index lies past the end
        with self._open() as container:
            stream = self._stream(container)
            stream.thread_type = "AUTO"
            try:
                for n, frame in enumerate(container.decode(stream)):
                    if n in want:
                        got[n] = frame.to_ndarray(format="rgb24")
                    tail = (n, frame)
                    if n >= top:
                        break
            except av.error.FFmpegError as exc:
                if tail is None:
                    why = ("no decoder for this video's codec" if "Decoder not found" in str(exc)
                           else f"no frame could be decoded ({str(exc)[:80]})")
                    raise MediaError(why, self.label) from None
        if tail is None:
            raise MediaError("no frame could be decoded", self.label)
        if tail[0] < top and tail[0] not in got:
            got[tail[0]] = tail[1].to_ndarray(format="rgb24")
        out = []
        for i in indices:
            rgb = got.get(int(i))
            if rgb is None:
                rgb = got[max(k for k in got if k <= int(i))] if any(k <= int(i) for k in got) else got[min(got)]
            h, w = rgb.shape[:2]
            if w * h > self.limits.max_pixels:  # a stream can change size mid-way
                raise MediaError(f"video frame {i} is {w}x{h}, over the pixel limit", self.label)
            out.append(np.ascontiguousarray(rgb))
        return out


__all__ = ["VideoSource", "VideoInfo"]
