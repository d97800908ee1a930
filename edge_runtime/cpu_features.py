"""May llama.cpp's weight repacking stay on? (the AMX workaround, narrowed to where it was seen to crash)

On CPUs that advertise AMX, llama.cpp puts quantized weights into an AMX buffer (ggml-cpu/amx). On
the 2-core Sapphire Rapids VM of our CI that path dies in the first llama_decode: SIGILL at
`tilezero %tmm4` in ggml's AMX kernel (gdb), llama-mtmd-cli SIGSEGVs, although /proc/cpuinfo lists
amx_tile, the kernel grants the tile permission and a hand-written LDTILECFG/TILEZERO sequence runs
(also across a sleep). On the lent 16-core GPU host (same CPU family) the same llama.cpp runs the
AMX path correctly. Nothing the kernel reports tells the two apart, so we run llama.cpp itself:
a child process loads the model with repacking on and decodes a few tokens. Its verdict is kept
per machine (CPU, kernel, llama.cpp version) and weight type in the cache folder; CPUs without AMX
never probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_CHILD = r"""
import sys
from minicpmv_edge.edge_runtime.engine import Context, Model
m = Model(sys.argv[1], extra_buffers=True)
c = Context(m, n_ctx=256, n_batch=64, n_threads=2)
for r in range(4):  # several multi-row (tile) steps and single-row steps: the fault is intermittent
    c.decode([(t + r) % m.n_vocab for t in range(1, 33)])
    c.decode([r + 1])
c.logits()
"""
_verdicts: dict[str, bool] = {}


def cpu_advertises_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_tile" in f.read()
    except OSError:
        return False


def _machine_key() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = "|".join(next((ln for ln in lines if ln.startswith(k)), "") for k in ("model name", "microcode", "flags"))
    except OSError:
        pass
    try:
        from importlib.metadata import version

        llama = version("llama-cpp-python")
    except Exception:  # noqa: BLE001
        llama = "?"
    return hashlib.sha256(f"{cpu}|{platform.release()}|{llama}".encode()).hexdigest()[:24]


# ggml types with an AMX kernel at llama.cpp 0c1e570 (ggml-cpu/amx/common.h qtype_has_amx_kernels): Q4_0, Q4_1,
# Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS. A file without them never reaches the AMX tiles, so it needs no probe.
_AMX_TYPES = frozenset({2, 3, 8, 12, 13, 14, 23})


def _tensor_types(model_path) -> set[int] | None:
    try:
        from minicpmv_edge.gguf_info import read_info

        return {x.ggml_type for x in read_info(model_path).tensors}
    except Exception:  # noqa: BLE001 - the loader reports a bad file; here it only keys the verdict
        return None


def _weights_kind(types: set[int] | None) -> str:
    """The set of tensor types the file holds: AMX has one kernel per type, and general.file_type does not
    say what is inside (an F16-labelled file with GPTQ weights repacked to Q4_0 crashed after an F16 probe)."""
    return "?" if types is None else "t" + "-".join(str(t) for t in sorted(types))


def repacking_safe(model_path: str | os.PathLike, cache_dir: Path | None = None) -> bool:
    """True unless this CPU advertises AMX and llama.cpp's AMX path crashed here (probed once per machine)."""
    if not cpu_advertises_amx():
        return True
    types = _tensor_types(model_path)
    if types is not None and not types & _AMX_TYPES:
        return True
    machine = _machine_key()
    key = machine + "/" + _weights_kind(types)  # AMX has one kernel family per weight type
    from .encoder_choice import cache_root

    memo = Path(cache_dir or cache_root()) / "repack-probe.json"
    seen = f"{memo}|{key}"  # per memo file: a verdict asked of another cache folder is read (or probed) there
    if seen in _verdicts:
        return _verdicts[seen]
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    # The fault is intermittent (seen under load after a probe of the same weight types had passed), so one
    # crash of any AMX weight type on this machine turns repacking off for every AMX type here.
    if isinstance(known, dict) and any(v is False for k, v in known.items() if k.startswith(machine + "/")):
        _verdicts[seen] = False
        return False
    if isinstance(known, dict) and isinstance(known.get(key), bool):
        _verdicts[seen] = known[key]
        return known[key]
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(model_path)], capture_output=True, timeout=600)
        ok = r.returncode == 0
        why = f"exit {r.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, why = False, str(exc)
    if not ok:
        log.warning("llama.cpp's AMX weight repacking crashed on this CPU (%s): repacking stays off here", why)
    _verdicts[seen] = ok
    known = known if isinstance(known, dict) else {}
    known[key] = ok
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    except OSError:
        pass
    return ok


__all__ = ["repacking_safe", "cpu_advertises_amx"]
