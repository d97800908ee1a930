"""--video and its options for `chat` / `run`: each flag maps onto one key of a video part
(edge_runtime/video.py VideoOptions); left out, the model's own recipe decides (GGUF
minicpmv_edge.video.*). A flag the model's recipe does not have is refused when the video is read
(exit 2 with one line)."""

from __future__ import annotations

from ._common import float_range, int_range

FLAGS = {  # flag dest -> video part key
    "fps": "fps", "max_frames": "max_frames", "packing": "packing", "max_packing": "max_packing",
    "stack_frames": "stack_frames", "video_mode": "mode",
}


def add_video_flags(p) -> None:
    p.add_argument("--video", metavar="PATH", help="a video file, read with the model's own video recipe")
    p.add_argument("--fps", type=float_range(0.0, 240.0, lo_open=True), default=None,
                   help="frames per second to sample (4.5: choose_fps, default 3; 4.6/4.7/OCR: whole samples per "
                        "second = --stack-frames; 2.6/4.0: default 1)")
    p.add_argument("--max-frames", type=int_range(1, 1024, "a frame count"), default=None,
                   help="the model card's MAX_NUM_FRAMES: 4.5 packed groups (default 180), 4.6 main frames (128), "
                        "2.6/4.0 frames (64); fewer when the context is smaller")
    p.add_argument("--packing", type=int_range(1, 6, "frames per group"), default=None,
                   help="4.5: frames per 3D-resampler group (force_packing; default: the card's rule)")
    p.add_argument("--max-packing", type=int_range(1, 6, "frames per group"), default=None,
                   help="4.5: MAX_NUM_PACKING (default 3)")
    p.add_argument("--stack-frames", type=int_range(1, 10, "samples per second"), default=None,
                   help="4.6/4.7/OCR: samples per second, 1 main frame + N-1 sub-frames stacked into one picture")
    p.add_argument("--video-mode", choices=("auto", "images"), default="auto",
                   help="auto: the model's recipe; images: every sampled frame a separate image (llama.cpp's way)")


def video_part(args, path: str) -> dict:
    part = {"type": "video", "video": path}
    for dest, key in FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None and not (key == "mode" and value == "auto"):
            part[key] = value
    return part


__all__ = ["add_video_flags", "video_part"]
