"""Import order must not matter (issue 12): a CUDA build of llama.cpp whose libggml-cuda.so carries its own
libstdc++ crashed at model load whenever numpy was imported first (minicpmv_edge/native_libs.py has the
root cause, found on the GPU machine). The fix puts the system libstdc++ into the global symbol scope
before llama.cpp's libraries load; these tests check that it is there in every import order and that
the model answers the same in each."""

from __future__ import annotations

import json
import subprocess
import sys

SYMBOL = "_ZNSo9_M_insertIlEERSoT_"  # std::ostream::_M_insert<long>, the call that crashed

CHILD = r"""
import ctypes, json, sys
order = sys.argv[1].split(",")
text, mmproj = sys.argv[2:4]
g = ctypes.CDLL(None)  # the global scope: what a lookup in any library sees first
before = hasattr(g, %r)
for mod in order:
    __import__(mod)
from minicpmv_edge.edge_runtime import MiniCPMV
after_import = hasattr(g, %r)
m = MiniCPMV(text, mmproj, n_ctx=512, n_threads=1)
r = m.chat([{"role": "user", "content": "Hello"}], temperature=0, repeat_penalty=1.0, max_tokens=6)
print("RESULT " + json.dumps({"before": before, "after": after_import, "raw": r.raw}))
""" % (SYMBOL, SYMBOL)


def test_every_import_order_loads_and_answers_the_same(store):
    res = store.converted("minicpmv-4.5")
    answers = {}
    for order in ("numpy", "numpy,PIL.Image,gguf", "llama_cpp", "llama_cpp,numpy", "minicpmv_edge"):
        p = subprocess.run([sys.executable, "-c", CHILD, order, str(res.text_path), str(res.mmproj_path)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (order, p.returncode, p.stderr[-2000:])
        out = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:])
        assert not out["before"]  # a bare interpreter has no libstdc++ in its global scope...
        assert out["after"], order  # ...and after our import it has, whatever came first
        answers[order] = out["raw"]
    assert len(set(answers.values())) == 1, answers


def test_sharing_is_idempotent_and_global():
    import ctypes

    from minicpmv_edge.native_libs import share_cxx_runtime

    first = share_cxx_runtime()
    assert first == share_cxx_runtime()
    if sys.platform.startswith("linux"):
        assert first == "libstdc++.so.6" and hasattr(ctypes.CDLL(None), SYMBOL)
