"""The per-image budget means the same in Python and in the C ABI (issue 14 item 5): for the families
mtmd slices (2.6, 4.0, 4.5), `MiniCPMV.image_cost(size, max_slice_nums=, max_pixels=)` and the bridge's
`mcv_session_image_cost` (mobile_bridge, computed by mtmd's own tokenizer) agree on the size the image is
shrunk to, the encoder runs, the slice grid, the context positions and the embedding rows, and a budget
one side refuses the other refuses too. (4.6/OCR/4.7 slice as their processors do in Python, which the
bridge leaves to mtmd; their costs are compared with what is encoded in test_prefill_budget.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
import mcv_bridge  # noqa: E402

SIZES = [(1344, 1344), (1000, 600), (1600, 900), (448, 448), (300, 2000), (2000, 301), (4000, 3000), (900, 620)]
# (max_slice_nums, max_pixels); 0 = the model's default on both sides
BUDGETS = [(0, 0), (9, 0), (4, 0), (2, 0), (1, 0), (0, 600_000), (4, 500_000), (2, 1_000_000), (1, 100_000)]


@pytest.fixture(scope="module")
def bridge():
    # the same build as test_mobile_bridge.py's (one configuration, so neither rebuilds the other's)
    lib = mcv_bridge.load_library(mcv_bridge.build("plain", jni=True, napi=True) / "libminicpmv_edge_bridge.so")
    lib.mcv_set_log_callback(None, None)
    return mcv_bridge.Bridge(lib)


@pytest.mark.parametrize("family", ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5"])
def test_image_cost_python_equals_c(store, bridge, family):
    res = store.converted(family)
    py = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    model = bridge.load(str(res.text_path), str(res.mmproj_path), n_ctx=4096, n_threads=2)
    s = bridge.session(model)
    try:
        seen = set()
        for w, h in SIZES:
            for slices, pixels in BUDGETS:
                c = bridge.image_cost(s, w, h, max_slices=slices, max_pixels=pixels)
                p = py.image_cost((w, h), max_slice_nums=slices or None, max_pixels=pixels or None)
                got_c = (c.width, c.height, c.n_chunks, (c.grid_cols, c.grid_rows), c.n_tokens, c.n_embd_rows)
                got_p = (p.width, p.height, p.n_chunks, tuple(p.grid), p.n_tokens, p.n_embd_rows)
                assert got_p == got_c, ((w, h), (slices, pixels), got_p, got_c)
                seen.add(p.n_chunks)
        assert {1, 3, 5, 10} <= seen  # the budgets did change the cost
        # over what mtmd can slice (9): both refuse
        with pytest.raises(InputError, match="max_slice_nums"):
            py.image_cost((1344, 1344), max_slice_nums=10)
        with pytest.raises(mcv_bridge.BridgeError):
            bridge.image_cost(s, 1344, 1344, max_slices=10)
    finally:
        bridge.lib.mcv_session_free(s)
        bridge.lib.mcv_model_free(model)
        py.close()
