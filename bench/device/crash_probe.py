"""Which import order crashes a CUDA build of llama.cpp at model load, and where (issue 12).

Each variant loads the same GGUF in a fresh `python3` with one thing changed: what is imported
before `llama_cpp` loads its shared libraries, whether a Python log callback is installed, weight
repacking, the GPU hidden. Records exit status (negative: killed by that signal), faulthandler's
Python stack, and for the first crashing variant the shared objects mapped before llama_cpp's
libraries load, the dynamic loader's order (LD_DEBUG=libs) and a native backtrace (cuda-gdb).

  python3 crash_probe.py MODEL.gguf OUT_DIR [LABEL]   (LLAMA_CPP_LIB_PATH selects the library copy)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import faulthandler, json, os, sys
faulthandler.enable()
pre, path, ngl, callback, bufts, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5], sys.argv[6]
for mod in [x for x in pre.split(",") if x]:
    __import__(mod)
if os.environ.get("PROBE_MAPS"):
    libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if ".so" in l})
    print("MAPS " + json.dumps(libs), flush=True)
if mode == "ours":
    from minicpmv_edge.edge_runtime.engine import Model
    m = Model(path, n_gpu_layers=ngl)
    print("LOADED", bool(m.ptr), flush=True)
    sys.exit(0)
import llama_cpp as L
if callback:
    @L.llama_log_callback
    def cb(level, text, user):
        pass
    L.llama_log_set(cb, None)
L.llama_backend_init()
p = L.llama_model_default_params()
p.n_gpu_layers = ngl
if bufts != "default":
    p.use_extra_bufts = bufts == "on"
m = L.llama_model_load_from_file(path.encode(), p)
print("LOADED", bool(m), flush=True)
"""

# name, modules imported first, n_gpu_layers, log callback, extra buffer types, extra env, bare|ours
VARIANTS = [
    ("llama_cpp first", "", 0, False, "default", {}),
    ("numpy first", "numpy", 0, False, "default", {}),
    ("numpy first, all layers on GPU", "numpy", 99, False, "default", {}),
    ("PIL first", "PIL.Image", 0, False, "default", {}),
    ("gguf first", "gguf", 0, False, "default", {}),
    ("llama_cpp first + log callback", "", 0, True, "default", {}),
    ("numpy first + log callback", "numpy", 0, True, "default", {}),
    ("numpy first, repacking off", "numpy", 0, False, "off", {}),
    ("numpy first, OPENBLAS_NUM_THREADS=1", "numpy", 0, False, "default", {"OPENBLAS_NUM_THREADS": "1"}),
    ("numpy first, OMP_NUM_THREADS=1", "numpy", 0, False, "default", {"OMP_NUM_THREADS": "1"}),
    ("numpy first, GPU hidden", "numpy", 0, False, "default", {"CUDA_VISIBLE_DEVICES": ""}),
    ("numpy, then minicpmv_edge, then llama_cpp", "numpy,minicpmv_edge", 0, False, "default", {}),
    ("our engine.Model (it imports numpy first)", "", 0, False, "default", {}, "ours"),
    ("our engine.Model, llama_cpp imported first", "llama_cpp", 0, False, "default", {}, "ours"),
]


def run(args: list[str], env: dict, timeout: int = 120) -> tuple[int, str]:
    try:
        p = subprocess.run([sys.executable, "-c", CHILD] + args, capture_output=True, text=True, env=env,
                           timeout=timeout)
        return p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired as exc:
        return 124, str(exc.stdout or "") + str(exc.stderr or "")


def main() -> int:
    model, out = sys.argv[1], Path(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else "probe"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    first_crash = None
    for name, pre, ngl, cb, bufts, extra, *mode in VARIANTS:
        args = [pre, model, str(ngl), "1" if cb else "0", bufts, mode[0] if mode else "bare"]
        env = dict(os.environ, **extra)
        rc, text = run(args, env)
        loaded = "LOADED True" in text
        results.append({"variant": name, "rc": rc, "loaded": loaded, "tail": text[-1500:]})
        print(f"{label:10s} {name:45s} rc={rc:4d} loaded={loaded}", flush=True)
        if not loaded and first_crash is None:
            first_crash = (name, args, env)
    (out / f"{label}-variants.json").write_text(json.dumps(results, indent=1))
    maps = {}
    for pre in ("numpy", "PIL.Image"):  # what each brings into the process before llama.cpp's libraries
        _, text = run([pre, "/nonexistent", "0", "0", "default", "bare"], dict(os.environ, PROBE_MAPS="1"))
        maps[pre] = json.loads(next((ln[5:] for ln in text.splitlines() if ln.startswith("MAPS ")), "[]"))
    (out / f"{label}-maps.json").write_text(json.dumps(maps, indent=1))
    if first_crash is not None:
        name, args, env = first_crash
        _, text = run(args, dict(env, PROBE_MAPS="1"))
        maps = next((ln[5:] for ln in text.splitlines() if ln.startswith("MAPS ")), "[]")
        (out / f"{label}-maps-before-llama.json").write_text(maps)
        _, text = run(args, dict(env, LD_DEBUG="libs"))
        order = [ln for ln in text.splitlines() if "calling init" in ln or "find library" in ln]
        (out / f"{label}-ld-debug.txt").write_text("\n".join(order[-400:]))
        gdb = "cuda-gdb" if subprocess.run(["which", "cuda-gdb"], capture_output=True).returncode == 0 else None
        if gdb:
            cmd = [gdb, "-q", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
                   "-ex", "info sharedlibrary", "--args", sys.executable, "-c", CHILD] + args
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
                (out / f"{label}-backtrace.txt").write_text((p.stdout + p.stderr)[-30000:])
            except subprocess.TimeoutExpired:
                (out / f"{label}-backtrace.txt").write_text("cuda-gdb timed out")
        print(f"{label}: first failing variant {name!r}: maps/ld-debug/backtrace written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
