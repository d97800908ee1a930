"""The C bridge and the families after 4.6: 4.7 with a projector is refused with a clear code and
message (canvas M-RoPE positions are not computed there); its text model alone chats; MiniCPM-OCR
1.0 loads with its projector like 4.6 and answers an image prompt."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mobile_bridge" / "python"))
import mcv_bridge  # noqa: E402

MCV_ERR_UNSUPPORTED = -13


@pytest.fixture(scope="module")
def bridge():
    build = mcv_bridge.build("plain", jni=True, napi=True)  # the same build test_mobile_bridge uses
    return mcv_bridge.Bridge(mcv_bridge.load_library(build / "libminicpmv_edge_bridge.so"))


def test_47_with_projector_is_refused(store, bridge):
    res = store.converted("minicpmv-4.7")
    with pytest.raises(mcv_bridge.BridgeError) as e:
        bridge.load(str(res.text_path), str(res.mmproj_path))
    assert e.value.code == MCV_ERR_UNSUPPORTED
    assert "canvas M-RoPE" in str(e.value) and "4.7" in str(e.value)


def test_47_text_only_and_ocr_with_image_run(store, bridge):
    lib = bridge.lib
    res = store.converted("minicpmv-4.7")
    model = bridge.load(str(res.text_path), None)
    s = bridge.session(model)
    bridge.check(lib.mcv_session_add_text(s, 1, b"Hello there"), s)
    assert bridge.generate(s, max_tokens=4) is not None
    lib.mcv_session_free(s)
    lib.mcv_model_free(model)
    ocr = store.converted("minicpm-ocr-1.0")
    model = bridge.load(str(ocr.text_path), str(ocr.mmproj_path))
    s = bridge.session(model)
    rgb = np.random.default_rng(0).integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    bridge.check(lib.mcv_session_add_image_rgb(s, rgb.tobytes(), 500, 300, 1500), s)
    bridge.check(lib.mcv_session_add_text(s, 1, b"Read the text."), s)
    assert bridge.generate(s, max_tokens=4) is not None
    lib.mcv_session_free(s)
    lib.mcv_model_free(model)
