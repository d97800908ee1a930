"""Video on MiniCPM-V 4.5: the 3D resampler's temporal packing vs frames fed as separate images.

For one clip (default: 30 s of synthetic 1280x720 video at 30 fps, moving shapes) and each
sampling rate (default 1 and 3 fps) it prints, side by side:

- prompt tokens and the answer's token budget left in the context (--ctx);
- time to first token: ours (packed by the model card's rule, packed with --packing, and every
  frame a separate image) and the anchor, llama.cpp's own llama-mtmd-cli fed the same frames
  as images (each frame shrunk to fit one 448-pixel slice: 64 tokens, the best llama.cpp does),
  with the ratio ours / anchor.

TTFT is encode + prefill up to the first sampled token, model load and video decoding excluded:
llama-mtmd-cli's from its own log (first "encoding mtmd batch" line to the first reply byte), ours
from the runtime's timings (which also include the tower + 3D resampler of every group, mtmd
tokenization and image preprocessing). The model is 4.5-shaped with random weights (bench/
convert.py: real widths, the real 27-layer SigLIP tower, --layers text layers of 36). Token counts
do not depend on the weights; `--plan-only` prints them without running any model.

  python bench/video.py --layers 4 --threads 2                  # 30 s 720p, 1 and 3 fps
  python bench/video.py --seconds 6 --layers 4 --threads 2      # a shorter clip on a busy machine
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(BENCH.parent)] + [p for p in sys.path if p and Path(p).resolve() != BENCH] + [str(BENCH)]

import _common  # noqa: E402

QUESTION = "Describe what happens in the video."

OURS = r"""
import json, sys, time
from minicpmv_edge.edge_runtime import MiniCPMV
text, mmproj, clip, opts, n, threads, ctx = sys.argv[1:8]
m = MiniCPMV(text, mmproj, n_ctx=int(ctx), n_threads=int(threads), n_batch=512)
part = dict(type="video", video=clip, **json.loads(opts))
t0 = time.perf_counter()
first = None
for piece in m.chat([{"role": "user", "content": [part, %r]}], stream=True, temperature=0, max_tokens=int(n)):
    first = first or time.perf_counter()
r = m.last_result
enc = m.video.encoder
print("RESULT " + json.dumps({"timings": r.timings.as_dict(), "usage": r.usage, "wall_first_ms": (first - t0) * 1e3,
                              "tower_ms": sum(enc.tower_ms) if enc else 0, "resampler_ms": sum(enc.resampler_ms) if enc else 0,
                              "notices": m.last_notices}))
""" % QUESTION


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int = 30) -> Path:
    """A synthetic clip: a gradient background with a square moving across it, mpeg4."""
    import av
    import numpy as np

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.mp4")
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(tmp), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt, s.bit_rate = width, height, "yuv420p", 4_000_000
        for i in range(int(seconds * fps)):
            t = i / fps
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[..., 0] = (xx * 255 // width + i * 3) % 256
            rgb[..., 1] = yy * 255 // height
            rgb[..., 2] = 96
            x0 = int((width - height // 4) * (0.5 + 0.5 * np.sin(t)))
            rgb[height // 3:height // 3 + height // 4, x0:x0 + height // 4] = (255, 255, 0)
            for pkt in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    tmp.rename(path)
    return path


def configs(fps_list, packings) -> list[tuple[str, float, dict]]:
    out = []
    for fps in fps_list:
        out.append((f"{fps:g} fps: frames as images", fps, {"fps": fps, "mode": "images"}))
        out.append((f"{fps:g} fps: packed (card's rule)", fps, {"fps": fps}))
        out += [(f"{fps:g} fps: packed x{p}", fps, {"fps": fps, "packing": p, "max_packing": p}) for p in packings]
    return out


def plan_tokens(clip: Path, opts: dict, ctx: int) -> dict:
    """Visual tokens of the video by the runtime's own planner (no model needed)."""
    from minicpmv_edge import video_facts
    from minicpmv_edge.edge_runtime.video import VideoOptions, VideoRecipe
    from minicpmv_edge.edge_runtime.video_source import VideoSource

    src = VideoSource(clip)
    recipe = VideoRecipe(video_facts.for_family("minicpmv-4.5"), exact=False, tokens_per_image=64)
    plan = recipe.plan(src.info, VideoOptions.from_dict(opts), ctx - 600)
    return {"frames": len(plan.indices), "units": len(plan.units), "video_tokens": plan.tokens, "detail": plan.detail,
            "notices": recipe.notices}


def anchor_frames(clip: Path, opts: dict, work: Path) -> list[Path]:
    """The frames our images mode feeds, shrunk to one 448-pixel slice, as PNG files for llama-mtmd-cli."""
    from PIL import Image

    from minicpmv_edge import video_facts
    from minicpmv_edge.edge_runtime.image_budget import fitted_size, resized
    from minicpmv_edge.edge_runtime.video import VideoOptions, VideoRecipe
    from minicpmv_edge.edge_runtime.video_source import VideoSource

    src = VideoSource(clip)
    recipe = VideoRecipe(video_facts.for_family("minicpmv-4.5"), exact=False, tokens_per_image=64)
    units = recipe.expand(src, VideoOptions.from_dict({**opts, "mode": "images"}), None)
    d = work / f"frames-{opts['fps']:g}fps"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, u in enumerate(units):
        p = d / f"{k:04d}.png"
        if not p.exists():
            Image.fromarray(resized(u.rgb, fitted_size(u.rgb.shape[1], u.rgb.shape[0], 1, None))).save(p)
        paths.append(p)
    return paths


def run_ours(text, mmproj, clip, opts, n, threads, ctx) -> dict:
    r = _common.run_measured([sys.executable, "-c", OURS, str(text), str(mmproj), str(clip), json.dumps(opts), str(n),
                              str(threads), str(ctx)], tail_chars=20000)
    line = next((x for x in r.stdout_tail.splitlines() if x.startswith("RESULT ")), None)
    if not r.ok or line is None:
        raise RuntimeError(f"our runtime failed:\n{r.stdout_tail[-3000:]}")
    d = json.loads(line[7:])
    t = d["timings"]
    return {"prompt_tokens": d["usage"]["prompt_tokens"], "ttft_ms": t["ttft_ms"], "wall_first_ms": d["wall_first_ms"],
            "encode_ms": sum(t["image_encode_ms"]), "tower_ms": d["tower_ms"], "resampler_ms": d["resampler_ms"],
            "peak_rss_mb": r.maxrss_bytes / 2**20, "load_before": r.load_before, "notices": d["notices"]}


def run_anchor(binary: Path, text, mmproj, frames: list[Path], n: int, threads: int, ctx: int) -> dict:
    from runtime import NO_REPACK, stream_timed

    cmd = [str(binary), "-m", str(text), "--mmproj", str(mmproj)]
    for f in frames:
        cmd += ["--image", str(f)]
    cmd += ["-p", QUESTION, "-n", str(n), "--temp", "0", "--repeat-penalty", "1.0", "-t", str(threads), "-c", str(ctx),
            "-b", "512", "-ub", "512", "--no-warmup", "--ignore-eos", "--log-timestamps"] + NO_REPACK
    t0, t_first, _, log, maxrss = stream_timed(cmd)
    m = re.search(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I encoding mtmd batch", log, re.M)
    start = int(m[1]) * 60 + int(m[2]) + int(m[3]) / 1e3 + int(m[4]) / 1e6
    enc = sum(int(x) for x in re.findall(r"mtmd batch encoding done in (\d+) ms", log))
    return {"ttft_ms": (t_first - t0 - start) * 1e3, "encode_ms": enc, "peak_rss_mb": maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "minicpmv-bench"))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", default="1,3", help="sampling rates to compare")
    ap.add_argument("--packing", default="3,6", help="frames per group of the packed rows (1-6)")
    ap.add_argument("--layers", type=int, default=4, help="text layers of the 4.5-shaped model (real: 36)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8, help="answer tokens generated per run")
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--plan-only", action="store_true", help="token counts only, no model")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work / f"clip-{a.seconds:g}s-{a.width}x{a.height}.mp4", a.seconds, a.width, a.height)
    fps_list = [float(x) for x in a.fps.split(",")]
    mach = _common.machine_description(work)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in mach.items()))
    print(f"clip: {clip.name} ({a.seconds:g} s, {a.width}x{a.height}, 30 fps); context {a.ctx}; "
          f"load average {_common.loadavg():.1f} (TTFT under load is inflated)")
    rows = []
    text = mmproj = binary = None
    if not a.plan_only:
        from runtime import prepare_model

        text, mmproj = prepare_model(work, a.layers, None)
        if not a.no_anchor:
            import llama_tools

            binary = llama_tools.build(["llama-mtmd-cli"])["llama-mtmd-cli"]
    anchors: dict[float, dict] = {}
    for name, fps, opts in configs(fps_list, [int(x) for x in a.packing.split(",")]):
        row = {"config": name, **plan_tokens(clip, opts, a.ctx)}
        if not a.plan_only:
            row["ours"] = run_ours(text, mmproj, clip, opts, a.tokens, a.threads, a.ctx)
            if binary is not None and fps not in anchors:
                frames = anchor_frames(clip, opts, work)
                anchors[fps] = run_anchor(binary, text, mmproj, frames, a.tokens, a.threads, a.ctx)
            row["anchor"] = anchors.get(fps)
        rows.append(row)
        _print_row(row, a.ctx)
        if a.json:  # after every row: a long run stopped half-way keeps what it measured
            Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


HEADER_PRINTED = False


def _print_row(row: dict, ctx: int) -> None:
    global HEADER_PRINTED
    if not HEADER_PRINTED:
        print(f"{'config':34} {'frames':>6} {'units':>5} {'tokens':>10} {'left':>6} {'TTFT ours':>10} "
              f"{'TTFT anchor':>11} {'ratio':>6}  detail")
        HEADER_PRINTED = True
    o, an = row.get("ours"), row.get("anchor")
    tok = o["prompt_tokens"] if o else row["video_tokens"]  # the whole prompt when run, else the video's
    left = ctx - tok
    t_o = f"{o['ttft_ms'] / 1e3:9.1f}s" if o else "-"
    t_a = f"{an['ttft_ms'] / 1e3:10.1f}s" if an else "-"
    ratio = f"{o['ttft_ms'] / an['ttft_ms']:6.2f}" if o and an else "-"
    print(f"{row['config']:34} {row['frames']:6d} {row['units']:5d} {tok:10d} {left:6d} {t_o:>10} {t_a:>11} {ratio:>6}"
          f"  {row['detail']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
