"""`minicpmv-edge chat -m MODEL --mmproj MMPROJ` and `minicpmv-edge run OUT_DIR`.

One-shot with -p; otherwise an interactive chat (interactive.py: /image PATH, /video PATH, /clear,
/help, /exit; Ctrl-C stops an answer).
Tokens stream to stdout; one line of timings follows each answer on stderr.
"""

from __future__ import annotations

import json
import sys

CHAT_EXAMPLES = """examples:
  minicpmv-edge chat -m text.gguf --mmproj mmproj.gguf --image cat.jpg -p "What is this?"
  minicpmv-edge chat -m text.gguf --mmproj mmproj.gguf --video clip.mp4 -p "Describe the video"
  minicpmv-edge chat -m text.gguf --mmproj mmproj.gguf --video clip.mp4 --fps 3 --packing 6 --max-packing 6 -p "What happens?"
  minicpmv-edge chat -m text.gguf --mmproj mmproj.gguf            # interactive: /help, /image PATH, /exit"""
RUN_EXAMPLES = """examples:
  minicpmv-edge run out/v45 --image a.jpg --image b.jpg -p "Compare the two images"
  minicpmv-edge run out/v45 --image a.jpg -p "What is it?" --temp 0 --json"""


def _common(p) -> None:
    from ._common import add_load_flags

    from .video_flags import add_video_flags

    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeatable)")
    add_video_flags(p)
    p.add_argument("-p", "--prompt", help="one-shot prompt; without it, chat interactively")
    p.add_argument("--system", "-sys", "--system-prompt", help="system prompt")
    p.add_argument("--think", action="store_true", help="enable thinking (4.5, 4.6)")
    from .sampling_flags import add_sampling_flags

    add_sampling_flags(p)
    add_load_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with text and timings")
    p.set_defaults(run=run)


def add_parser(sub) -> None:
    from ._common import add_command

    c = add_command(sub, "chat", "chat with a GGUF text model + mmproj", CHAT_EXAMPLES)
    c.add_argument("-m", "--model", required=True, metavar="MODEL.gguf")
    c.add_argument("--mmproj", metavar="MMPROJ.gguf", help="vision projector (needed for images and video)")
    _common(c)
    r = add_command(sub, "run", "chat with a converted folder (reads manifest.json)", RUN_EXAMPLES)
    r.add_argument("folder", metavar="OUT_DIR")
    _common(r)


def _load(args):
    from minicpmv_edge.edge_runtime import MiniCPMV
    from minicpmv_edge.manifest import Manifest

    from ._common import load_options

    opts = load_options(args)
    _check_command_fits(args)
    if getattr(args, "folder", None):
        m = Manifest.load(args.folder)
        return MiniCPMV(m.path_of(args.folder, "text"), m.path_of(args.folder, "mmproj"), opts)
    return MiniCPMV(args.model, args.mmproj, opts)


def _check_command_fits(args) -> None:
    """`chat` takes GGUF files, `run` a converted folder: say which command fits when they are swapped."""
    from pathlib import Path

    from minicpmv_edge.errors import InputError

    folder = getattr(args, "folder", None)
    if folder is not None and Path(folder).is_file():
        raise InputError(f"`run` takes a converted folder; for GGUF files use: minicpmv-edge chat -m {folder} "
                         "--mmproj MMPROJ.gguf", folder)
    model = getattr(args, "model", None)
    if model is not None and Path(model).is_dir():
        raise InputError(f"`chat -m` takes a GGUF file; for a converted folder use: minicpmv-edge run {model}", model)


def _timing_line(r) -> str:
    t = r.timings
    enc = "+".join(f"{x:.0f}" for x in t.image_encode_ms) or "0"
    return (f"[load {t.load_ms:.0f} ms | image encode {enc} ms | prefill {t.prefill_tok_s:.1f} tok/s"
            f" ({t.prompt_tokens_evaluated}/{t.prompt_tokens} tok) | decode {t.decode_tok_s:.1f} tok/s"
            f" ({t.generated_tokens} tok) | peak RSS {t.peak_rss_mb:.0f} MB]")


def _answer(model, messages, args, out):
    from .sampling_flags import sampling_kwargs

    kw = dict(enable_thinking=args.think, **sampling_kwargs(args))
    if args.json:
        return model.chat(messages, **kw)
    in_reasoning = False
    for piece in model.chat(messages, stream=True, **kw):
        if piece.reasoning and not in_reasoning:
            out.write("<think>")
        if in_reasoning and not piece.reasoning:
            out.write("</think>\n")
        in_reasoning = piece.reasoning
        out.write(piece.text)
        out.flush()
    out.write("\n")
    r = model.last_result
    print(_timing_line(r), file=sys.stderr, flush=True)
    return r


def _json_result(r) -> dict:
    d = {"text": r.text, "reasoning": r.reasoning, "finish_reason": r.finish_reason, "seed": r.seed,
         "usage": r.usage, "timings": r.timings.as_dict()}
    if r.logprobs is not None:
        d["logprobs"] = [e.as_openai() for e in r.logprobs]
    return d


def _user_content(images, video, text, args):
    from .video_flags import video_part

    # paths (one-shot --image) or images the interactive /image decoded and encoded already
    content = [{"type": "image", "image": p} if isinstance(p, str) else p for p in images]
    if video:
        content.append(video_part(args, video))
    content.append(text)
    return content


def run(args) -> int:
    from minicpmv_edge.extras import require

    from .sampling_flags import sampling_kwargs

    require("runtime", "chat")
    if args.video:
        require("video", "--video")
    sampling_kwargs(args)  # bad flag combinations and unreadable grammar files fail before the model loads
    model = _load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        messages.append({"role": "user", "content": _user_content(args.image, args.video, args.prompt, args)})
        r = _answer(model, messages, args, sys.stdout)
        if args.json:
            print(json.dumps(_json_result(r), ensure_ascii=False))
        return 0
    return _interactive(model, messages, args)


def _interactive(model, messages, args) -> int:
    from . import interactive

    return interactive.run(model, messages, args, _answer, _user_content)
