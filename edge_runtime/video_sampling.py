"""Which frames of a video each model's recipe takes, from the frame count and rate alone.

Our implementation of the published rules (tests compare each with its source on many clips):

- `packed`: MiniCPM-V 4.5's model card, `encode_video(video_path, choose_fps, force_packing)`
  with MAX_NUM_FRAMES, MAX_NUM_PACKING, TIME_SCALE: how many frames at `choose_fps`, how many per
  3D-resampler group (`packing_nums`), uniform sampling over the frame indices, and each frame's
  temporal id (its time snapped to the nearest TIME_SCALE step, found as the card finds it,
  with scipy's cKDTree; exact ties go where cKDTree puts them).
- `stacked`: transformers' MiniCPMV4_6VideoProcessor.sample_frames and the per-second grouping
  of its _preprocess: one main frame per second (long videos: a 0.1 s grid cut to
  max_num_frames) plus stack_frames-1 sub-frames per second, composited per second.
- `frames`: MiniCPM-V 2.6's model card: one frame every round(fps_video / fps) frames, uniformly
  cut to MAX_NUM_FRAMES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def uniform_sample(n: int, k: int) -> list[int]:
    """k of range(n) at the centres of k equal gaps (the model cards' uniform_sample)."""
    gap = n / k
    return [int(i * gap + gap / 2) for i in range(k)]


@dataclass(frozen=True)
class PackedPlan:
    indices: list[int]  # frames, in order
    groups: list[list[int]]  # temporal ids, one list per 3D-resampler group (64 tokens each)
    packing: int

    @property
    def n_frames(self) -> int:
        return len(self.indices)


def nearest_time_ids(times: np.ndarray, duration: float, time_scale: float) -> np.ndarray:
    """Each time snapped to np.arange(0, duration, time_scale), divided by time_scale, int32."""
    from minicpmv_edge.extras import need

    cKDTree = need("scipy.spatial", "video", "MiniCPM-V 4.5 video").cKDTree
    scale = np.arange(0, duration, time_scale)
    if len(scale) == 0:
        scale = np.zeros(1)
    _, idx = cKDTree(scale[:, None]).query(np.asarray(times, np.float64)[:, None])
    return (scale[idx] / time_scale).astype(np.int32)


def packed(n_frames: int, fps_video: float, choose_fps: float, max_frames: int = 180, max_packing: int = 3,
           force_packing: int | None = None, time_scale: float = 0.1, n_choose: int | None = None) -> PackedPlan:
    """MiniCPM-V 4.5's encode_video. `n_choose`: take at most this many frames (the runtime's context
    budget; the packing stays the card's)."""
    duration = n_frames / fps_video
    if choose_fps * int(duration) <= max_frames:
        packing = 1
        choose = round(min(choose_fps, round(fps_video)) * min(max_frames, duration))
    else:
        packing = math.ceil(duration * choose_fps / max_frames)
        if packing <= max_packing:
            choose = round(duration * choose_fps)
        else:
            choose = round(max_frames * max_packing)
            packing = max_packing
    if n_choose is not None:
        choose = min(choose, n_choose)
    choose = max(1, choose)  # the card divides by it; a clip shorter than one sampling step keeps a frame
    indices = uniform_sample(n_frames, choose)
    if force_packing:
        packing = min(force_packing, max_packing)
    ids = nearest_time_ids(np.asarray(indices) / fps_video, duration, time_scale)
    groups = [ids[i:i + packing].tolist() for i in range(0, len(ids), packing)]
    return PackedPlan(indices, groups, packing)


@dataclass(frozen=True)
class StackedPlan:
    main: list[int]  # main frame indices
    sub: list[int]  # sub-frame indices, all seconds in order
    per_second: list[int]  # sub-frames of each second (num_seconds entries)

    def units(self) -> list[tuple[str, list[int]]]:
        """The processor's visual units in order: ("main", [i]) and ("stack", [j, ...]) interleaved:
        main frame k, then second k's composite when it has sub-frames."""
        out: list[tuple[str, list[int]]] = []
        starts = np.concatenate([[0], np.cumsum(self.per_second)]).astype(int)
        for k, i in enumerate(self.main):
            out.append(("main", [i]))
            if k < len(self.per_second) and self.per_second[k]:
                out.append(("stack", self.sub[starts[k]:starts[k + 1]]))
        return out


def stacked(n_frames: int, fps_video: float, max_num_frames: int = 128, stack_frames: int = 1) -> StackedPlan:
    """MiniCPMV4_6VideoProcessor.sample_frames (+ _preprocess's grouping by second)."""
    duration = n_frames / fps_video
    num_seconds = math.ceil(duration)
    if duration > max_num_frames:
        stamps = [round(i * 0.1, 1) for i in range(int(duration / 0.1))]
        main = [min(int(ts * fps_video), n_frames - 1) for ts in stamps]
        if len(main) > max_num_frames:
            main = [main[i] for i in np.linspace(0, len(main) - 1, max_num_frames, dtype=int)]
    else:
        main = [int(i * fps_video) for i in range(num_seconds)]
    sub_ts: list[float] = []
    if stack_frames > 1:
        for sec in range(num_seconds):
            for j in range(1, stack_frames):
                ts = sec + j / stack_frames
                if ts < duration:
                    sub_ts.append(ts)
        cap = max_num_frames * (stack_frames - 1)
        if len(sub_ts) > cap:
            sub_ts = [sub_ts[int(i)] for i in np.linspace(0, len(sub_ts) - 1, cap, dtype=int)]
    sub = [min(int(ts * fps_video), n_frames - 1) for ts in sub_ts]
    per_second, cursor = [], 0
    for sec in range(num_seconds):
        start = cursor
        while cursor < len(sub_ts) and sub_ts[cursor] < sec + 1:
            cursor += 1
        per_second.append(cursor - start)
    return StackedPlan(main, sub, per_second)


def frames(n_frames: int, fps_video: float, fps: float = 1.0, max_frames: int = 64) -> list[int]:
    """MiniCPM-V 2.6's encode_video, at `fps` frames per second."""
    step = max(1, round(fps_video / fps))
    idx = list(range(0, n_frames, step))
    if len(idx) > max_frames:
        idx = [idx[i] for i in uniform_sample(len(idx), max_frames)]
    return idx


__all__ = ["PackedPlan", "StackedPlan", "packed", "stacked", "frames", "uniform_sample", "nearest_time_ids"]
