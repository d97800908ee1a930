"""Progress bars (tqdm) for long steps: converting, quantizing, exporting, encoding many slices.

Library code asks `bar(...)` for a bar and updates it; bars are drawn only when the CLI
turned them on (stderr is a terminal and --json is off) or MINICPMV_EDGE_PROGRESS=1 asks
for them; otherwise `bar` returns a stand-in that does nothing, so the Python API and the
server never print.
"""

from __future__ import annotations

import os
import sys

_enabled: bool | None = None  # None: not decided by the CLI; off unless the environment asks


def enable(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    env = os.environ.get("MINICPMV_EDGE_PROGRESS")
    if env is not None:
        return env not in ("", "0", "false", "no")
    return bool(_enabled)


class _Off:
    n = 0

    def update(self, n=1) -> None:
        self.n += n

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


OFF = _Off()  # for callers that decide themselves that no bar is wanted


def bar(total: float | None, desc: str, unit: str = "B"):
    """A tqdm bar on stderr (bytes: scaled units, rate and ETA), or a silent stand-in."""
    if not enabled() or total == 0:
        return _Off()
    from tqdm import tqdm

    scaled = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scaled, unit_divisor=1024 if scaled else 1000,
                file=sys.stderr, leave=True, dynamic_ncols=True, mininterval=0.2)
