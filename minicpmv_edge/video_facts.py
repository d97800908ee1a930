"""Each family's own video recipe, written once into the text GGUF (`minicpmv_edge.video.*`).

- 2.6 / 4.0 ("frames"): the model cards' encode_video: 1 frame per second, at most
  MAX_NUM_FRAMES = 64, each frame an unsliced image without an id.
- 4.5 ("packed"): the model card's encode_video with the 3D resampler: choose_fps 3 (its
  default), MAX_NUM_FRAMES = 180 packed groups, MAX_NUM_PACKING = 3 (valid 1-6), TIME_SCALE 0.1 s.
- 4.6 / 4.7 / MiniCPM-OCR 1.0 ("stacked"): MiniCPMV4_6VideoProcessor: max_num_frames 128 main
  frames (one per second), stack_frames 1 (N > 1: N-1 sub-frames per second composited into one
  picture); the 4.6 model card's video call passes max_slice_nums 1 and use_image_id False.

The converter writes these keys; the runtime reads them, and for a GGUF without them (an older
conversion, another tool's file) takes the record of the detected family.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import schema

FRAMES, PACKED, STACKED = "frames", "packed", "stacked"


@dataclass(frozen=True)
class VideoFacts:
    recipe: str
    fps: float  # default sampling rate; "stacked": samples per second (= stack_frames)
    max_frames: int
    max_packing: int = 1
    packing_limit: int = 1
    time_scale: float = 0.1
    stack_frames: int = 1

    def write(self, w) -> None:
        w.add_string(schema.EDGE_VIDEO_RECIPE, self.recipe)
        w.add_float64(schema.EDGE_VIDEO_FPS, float(self.fps))
        w.add_uint32(schema.EDGE_VIDEO_MAX_FRAMES, self.max_frames)
        w.add_uint32(schema.EDGE_VIDEO_MAX_PACKING, self.max_packing)
        w.add_uint32(schema.EDGE_VIDEO_PACKING_LIMIT, self.packing_limit)
        w.add_float64(schema.EDGE_VIDEO_TIME_SCALE, float(self.time_scale))  # f64: 0.1 exactly as the card
        w.add_uint32(schema.EDGE_VIDEO_STACK_FRAMES, self.stack_frames)


_FRAMES = VideoFacts(FRAMES, fps=1.0, max_frames=64)
_STACKED = VideoFacts(STACKED, fps=1.0, max_frames=128, stack_frames=1)
FAMILIES: dict[str, VideoFacts] = {
    "minicpmv-2.6": _FRAMES,
    "minicpmv-4.0": _FRAMES,
    "minicpmv-4.5": VideoFacts(PACKED, fps=3.0, max_frames=180, max_packing=3, packing_limit=6, time_scale=0.1),
    "minicpmv-4.6": _STACKED,
    "minicpmv-4.7": _STACKED,
    "minicpm-ocr-1.0": _STACKED,
}


def for_family(family: str) -> VideoFacts:
    return FAMILIES.get(family, _FRAMES)


def read(kv: dict, family: str) -> VideoFacts:
    """From the text GGUF's keys, each missing one from the family's record."""
    base = for_family(family)
    if schema.EDGE_VIDEO_RECIPE not in kv:
        return base

    def get(key, default, kind):
        return kind(kv[key]) if key in kv else default

    return VideoFacts(recipe=str(kv[schema.EDGE_VIDEO_RECIPE]),
                      fps=get(schema.EDGE_VIDEO_FPS, base.fps, float),
                      max_frames=get(schema.EDGE_VIDEO_MAX_FRAMES, base.max_frames, int),
                      max_packing=get(schema.EDGE_VIDEO_MAX_PACKING, base.max_packing, int),
                      packing_limit=get(schema.EDGE_VIDEO_PACKING_LIMIT, base.packing_limit, int),
                      time_scale=get(schema.EDGE_VIDEO_TIME_SCALE, base.time_scale, float),
                      stack_frames=get(schema.EDGE_VIDEO_STACK_FRAMES, base.stack_frames, int))


__all__ = ["VideoFacts", "FAMILIES", "for_family", "read", "FRAMES", "PACKED", "STACKED"]
