"""Helpers shared by the bench/ scripts: measuring a child process, describing the machine.

Benchmarks measure whole child processes (a converter, a runtime) the way a user
runs them, so the numbers include interpreter start-up and imports. Per run:

* wall time: `time.perf_counter()` from spawn to reap;
* CPU time: user + system from the child's own rusage (`os.wait4`);
* peak RSS: `ru_maxrss` of that one child (`os.wait4`, exact, includes file-backed
  pages such as mmap'ed safetensors that were touched), plus the largest
  anonymous / file-backed RSS seen while polling /proc/<pid>/status, which tells
  heap (real memory pressure) apart from mapped page cache (reclaimable).

Nothing here drops caches: callers state whether runs were on a warm cache.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

MB = 1e6
MiB = 1 << 20


@dataclass
class RunResult:
    cmd: list[str]
    returncode: int
    wall_s: float
    cpu_s: float  # user + system of the child (and its reaped descendants)
    maxrss_bytes: int  # ru_maxrss of the child: peak resident set, file-backed pages included
    peak_anon_bytes: int  # largest RssAnon seen while polling (heap, numpy arrays)
    peak_file_bytes: int  # largest RssFile seen while polling (mmap'ed inputs, libraries)
    samples: int
    load_before: float = 0.0  # 1-minute load average when the run started / ended: other work on the
    load_after: float = 0.0   # machine inflates wall time (CPU time much less so)
    stdout_tail: str = ""  # stdout and stderr together, interleaved as written
    stderr_tail: str = ""  # always empty (kept for callers of the first version)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _status_fields(pid: int, keys=("RssAnon", "RssFile", "VmHWM")) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in keys:
            out[k] = int(v.split()[0]) * 1024  # kB
    return out


def run_measured(cmd: Sequence[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
                 poll_s: float = 0.02, log_path: str | os.PathLike | None = None,
                 tail_chars: int = 2000) -> RunResult:
    """Run `cmd` to completion and measure it (see the module docstring).

    stdout+stderr go to `log_path` (or a temp file), never through a pipe, so a
    chatty child cannot block on a full pipe and logging costs it nothing extra.
    """
    import tempfile

    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix="bench-", suffix=".log")
        os.close(fd)
    peak_anon = peak_file = 0
    samples = 0
    load_before = loadavg()
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            f = _status_fields(proc.pid)
            if f:
                samples += 1
                peak_anon = max(peak_anon, f.get("RssAnon", 0))
                peak_file = max(peak_file, f.get("RssFile", 0))
            time.sleep(poll_s)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen from waiting again
    text = Path(log_path).read_text(errors="replace")
    if own_log:
        os.unlink(log_path)
    return RunResult(
        cmd=list(cmd), returncode=proc.returncode, wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime,
        maxrss_bytes=ru.ru_maxrss * 1024,  # Linux reports KiB
        peak_anon_bytes=peak_anon, peak_file_bytes=peak_file, samples=samples,
        load_before=load_before, load_after=loadavg(), stdout_tail=text[-tail_chars:],
    )


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def git_state(repo: str | os.PathLike, paths: Sequence[str] = ()) -> str:
    """`<short commit>` plus `+uncommitted changes in ...` when `paths` differ from it."""
    def git(*a):
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths) if paths else ""
    return head + (f" + uncommitted changes in {', '.join(paths)}" if dirty else "")


def read_files(paths: Sequence[os.PathLike | str], chunk: int = 16 * MiB) -> tuple[int, float]:
    """Read files sequentially (to warm the page cache); returns (bytes, seconds)."""
    buf = bytearray(chunk)
    mv = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while True:
                k = fh.readinto(mv)
                if not k:
                    break
                n += k
    return n, time.perf_counter() - t0


def _first(pattern: str, text: str, default: str = "?") -> str:
    m = re.search(pattern, text, re.M)
    return m.group(1).strip() if m else default


def machine_description(path: str | os.PathLike = "/tmp") -> dict[str, str]:
    """CPU model and count, RAM, the disk holding `path`, OS and library versions."""
    d: dict[str, str] = {}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = _first(r"^Model name:\s*(.+)$", lscpu, platform.processor() or "?")
    hyper = _first(r"^Hypervisor vendor:\s*(.+)$", lscpu, "")
    l3 = _first(r"^L3 cache:\s*(.+)$", lscpu, "")
    d["cpu"] = f"{model}, {len(os.sched_getaffinity(0))} usable cores" + (f", L3 {l3}" if l3 else "") + (
        f" ({hyper} VM)" if hyper else "")
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(_first(r"^MemTotal:\s*(\d+)", meminfo, "0"))
        d["ram"] = f"{kib / (1 << 20):.1f} GiB"
    except OSError:
        d["ram"] = "?"
    d["disk"] = _disk(path)
    d["os"] = f"{platform.system()} {platform.release()}"
    vers = [f"python {platform.python_version()}"]
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("numpy", "torch", "transformers", "gguf", "llama-cpp-python"):
        try:
            vers.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    d["software"] = ", ".join(vers)
    return d


def _disk(path) -> str:
    try:
        src = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(path)], capture_output=True, text=True,
                             check=False).stdout.split()
    except OSError:
        src = []
    dev, fs = (src + ["?", "?"])[:2]
    total, _, free = shutil.disk_usage(path)
    rota = "?"
    name = Path(dev).name
    rpath = Path(f"/sys/block/{name}/queue/rotational")
    if rpath.exists():
        rota = "rotational" if rpath.read_text().strip() == "1" else "non-rotational"
    return f"{dev} ({fs}, {rota} per the kernel, {total / 1e9:.0f} GB, {free / 1e9:.0f} GB free)"


def fmt_bytes(n: float) -> str:
    return f"{n / MB:,.0f} MB" if n < 10e9 else f"{n / 1e9:,.2f} GB"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A GitHub-markdown table (also readable on a terminal)."""
    cols = list(zip(header, *rows))
    widths = [max(len(str(c)) for c in col) for col in cols]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def python_exe() -> str:
    return sys.executable


__all__ = ["RunResult", "run_measured", "read_files", "machine_description", "fmt_bytes", "table", "MB", "MiB",
           "python_exe", "loadavg", "git_state"]
