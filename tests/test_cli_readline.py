"""The interactive chat at a real terminal (a pseudo-terminal): readline line editing, history
recalled with the up arrow and kept across sessions in $XDG_STATE_HOME, Ctrl-D ends the chat."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

UP, LEFT = b"\x1b[A", b"\x1b[D"


class Terminal:
    def __init__(self, argv, env):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.seen = b""

    def expect(self, needle: bytes, timeout: float = 300, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.seen.count(needle) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    assert self.seen.count(needle) >= count, f"{needle!r} not seen in {self.seen[-2000:]!r}"

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)


def _session(folder, state):
    env = {**os.environ, "XDG_STATE_HOME": str(state), "PYTHONUNBUFFERED": "1", "TERM": "xterm"}
    return Terminal([sys.executable, "-m", "minicpmv_edge", "run", str(folder), "-n", "2", "--temp", "0", "-t", "1",
                     "-c", "512"], env)


def test_line_editing_and_history_at_a_terminal(store, tmp_path):
    folder = store.converted("minicpmv-4.5").text_path.parent
    t = _session(folder, tmp_path)
    try:
        t.expect(b"/help for commands")
        t.expect(b"> ")  # keys typed before readline waits for them would reach the terminal cooked
        t.send(b"/hlp" + LEFT + LEFT + b"e\r")  # edited in place: "/help"
        t.expect(b"attach an image to your next message")
        t.expect(b"> ", count=2)
        t.send(UP + b"\r")  # the last line again, from history
        t.expect(b"attach an image", timeout=60, count=2)
        t.expect(b"> ", count=3)
        t.send(b"\x04")  # Ctrl-D at the prompt ends the chat
        rc = t.close()
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
    assert rc == 0, t.seen[-2000:]
    assert b"Traceback" not in t.seen
    history = (tmp_path / "minicpmv-edge" / "chat_history").read_text().splitlines()
    assert history == ["/help"], history  # the edited line, once (Python's readline skips a repeat)
    # a new session starts with that history: the up arrow brings back the last line
    t = _session(folder, tmp_path)
    try:
        t.expect(b"> ")
        t.send(UP + b"\r")
        t.expect(b"attach an image to your next message")
        t.send(b"/exit\r")
        assert t.close() == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
