"""llama.cpp's weight repacking is turned off only where its AMX path crashes (edge_runtime/cpu_features.py):
the verdict is llama.cpp's own behaviour on this machine, remembered, and what the runtime then uses."""

from __future__ import annotations

import json
import subprocess
import sys

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.cpu_features import _CHILD, cpu_advertises_amx, repacking_safe


def test_verdict_is_what_llama_cpp_does_here_and_is_used(store, tmp_path):
    from minicpmv_edge.quantize.llama import quantize_text

    res = store.converted("minicpmv-4.5")
    q8 = tmp_path / "text-q8_0.gguf"
    quantize_text(res.text_path, q8, "Q8_0")
    verdict = repacking_safe(q8, cache_dir=tmp_path)
    memo = tmp_path / "repack-probe.json"
    if cpu_advertises_amx():
        # the verdict is what a process with repacking on really does on this CPU
        child = subprocess.run([sys.executable, "-c", _CHILD, str(q8)], capture_output=True, timeout=600)
        assert (child.returncode == 0) == verdict, child.returncode
        assert list(json.loads(memo.read_text()).values()) == [verdict]  # remembered for the next process
    else:
        assert verdict and not memo.exists()  # no AMX: never probed, repacking on
    m = MiniCPMV(q8, res.mmproj_path, n_ctx=256, n_threads=2)
    assert bool(m.model.params.use_extra_bufts) == repacking_safe(q8)
    assert m.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=4).finish_reason in ("stop", "length")
    m.close()
