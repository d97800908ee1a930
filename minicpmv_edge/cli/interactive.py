"""The interactive chat of `run` / `chat` without -p.

Line editing and history come from readline (stdin a terminal; history kept in
$XDG_STATE_HOME/minicpmv-edge/chat_history). `/image PATH` checks the file at once and
prefills it right away (MiniCPMV.prefill: encoded and placed in the KV cache), so the question
that follows evaluates only its own tokens. Ctrl-C during an answer stops that answer (llama.cpp's
abort; the conversation and its KV cache stay), during /image it drops that image, at the prompt it
clears the line; Ctrl-D or /exit ends. When stdout is not a terminal (piped to a file or another
program) the prompt goes to stderr, so stdout holds only the answers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

HELP = """commands:
  /image PATH   attach an image to your next message (checked and encoded now)
  /video PATH   attach a video to your next message
  /clear        forget the conversation (also /reset)
  /help         this list
  /exit         quit (also /quit, Ctrl-D)
Ctrl-C stops an answer and keeps the conversation; at the prompt it clears the line."""


def history_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "minicpmv-edge" / "chat_history"


def _setup_readline():
    """readline editing and a persistent history, when stdin is a terminal; None otherwise."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input() still works
        return None
    path = history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return readline, path


def _read(prompt: str) -> str:
    if sys.stdout.isatty():
        return input(prompt)
    sys.stderr.write(prompt)  # stdout carries only the answers
    sys.stderr.flush()
    return input()


class _StopOnCtrlC:
    """While an answer streams, Ctrl-C cancels it through llama.cpp's abort callback (the
    generation returns 'cancelled' and the KV cache stays consistent) instead of raising."""

    def __init__(self, model):
        self.model, self.pressed, self._old = model, False, None

    def _handler(self, *_):
        self.pressed = True
        self.model.cancel()

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


def run(model, messages: list, args, answer, user_content) -> int:
    """`answer(model, messages, args, out)` streams one reply; `user_content(...)` builds a user turn."""
    from minicpmv_edge.errors import EdgeError

    pending_images: list = []
    pending_video = args.video
    for path in args.image:
        if not _attach(model, path, pending_images, messages):
            return 2
    rl = _setup_readline()
    print("interactive chat: type a message, /help for commands", file=sys.stderr)
    try:
        while True:
            try:
                line = _read("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:  # clears the line, as a shell does
                print(file=sys.stderr)
                continue
            cmd, _, rest = line.strip().partition(" ")
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/help":
                print(HELP, file=sys.stderr)
                continue
            if cmd in ("/clear", "/reset"):
                messages[:] = [m for m in messages if m["role"] == "system"]
                pending_images, pending_video = [], None
                model.reset()
                print("(conversation cleared)", file=sys.stderr)
                continue
            if cmd == "/image":
                n = len(pending_images)
                with _StopOnCtrlC(model) as stop:  # Ctrl-C while it encodes drops the image, keeps the chat
                    _attach(model, rest.strip(), pending_images, messages)
                if stop.pressed:
                    del pending_images[n:]
                    print("(stopped; no image attached, the conversation continues)", file=sys.stderr)
                continue
            if cmd == "/video":
                pending_video = _check_video(rest.strip()) or pending_video
                continue
            if cmd.startswith("/"):
                print(f"unknown command {cmd}; /help lists them", file=sys.stderr)
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": user_content(pending_images, pending_video, line, args)})
            pending_images, pending_video = [], None
            try:
                with _StopOnCtrlC(model) as stop:
                    r = answer(model, messages, args, sys.stdout)
            except EdgeError as exc:  # one bad image or video must not end the conversation
                messages.pop()
                print(f"error: {exc}", file=sys.stderr)
                continue
            if stop.pressed or r.finish_reason == "cancelled":
                print("(stopped; the conversation continues)", file=sys.stderr)
            if args.json:
                print(json.dumps({"text": r.text, "finish_reason": r.finish_reason, "timings": r.timings.as_dict()},
                                 ensure_ascii=False))
            messages.append({"role": "assistant", "content": r.raw if r.reasoning else r.text})
    finally:
        if rl is not None:
            try:
                rl[0].write_history_file(rl[1])
            except OSError:
                pass


def _attach(model, path: str, pending: list, messages: list) -> bool:
    """Check an image, say what it costs, and prefill it now (MiniCPMV.prefill: encoded and placed in
    the KV cache with the conversation so far), so the question that follows costs only its own
    tokens; on a problem print it and keep the conversation."""
    from minicpmv_edge.edge_runtime.media import load_image
    from minicpmv_edge.errors import Cancelled, EdgeError

    if not path:
        print("usage: /image PATH", file=sys.stderr)
        return False
    try:
        image = load_image(path, model.limits)
        earlier = sum(1 for m in messages if m["role"] == "user" and isinstance(m["content"], list)
                      for p in m["content"] if not isinstance(p, (str, dict)) or p.get("type") == "image")
        c = model.image_cost(image.rgb, index=earlier + len(pending))  # its <image_id> number
        grid = f", {c.grid[0]}x{c.grid[1]} slices" if c.n_chunks > 1 else ""
        print(f"(image {Path(path).name}: {c.width}x{c.height}, {c.n_chunks} encoder run(s){grid}, {c.n_tokens} "
              "tokens; encoding...)", file=sys.stderr, flush=True)
        pre = model.prefill(list(messages) + [{"role": "user", "content": pending + [image]}])
    except Cancelled:  # Ctrl-C (run() says so); the session has resynced its cache
        return False
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    pending.append(image)
    print(f"(encoded {pre.images_encoded} chunk(s) and prefilled {pre.n_evaluated} token(s) in {pre.ms:.0f} ms; "
          "it goes with your next message)", file=sys.stderr)
    return True


def _check_video(path: str) -> str | None:
    from minicpmv_edge.edge_runtime.media import _check_file
    from minicpmv_edge.errors import EdgeError

    if not path:
        print("usage: /video PATH", file=sys.stderr)
        return None
    try:
        _check_file(Path(path), 1 << 40, "video")
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    print(f"(video {Path(path).name}: goes with your next message)", file=sys.stderr)
    return path
