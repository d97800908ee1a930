"""Reference implementations that fidelity tests compare llama.cpp against.

Built from transformers' own towers (Qwen2/Qwen3/Llama/SigLIP, and the native
MiniCPM-V 4.6 model), plus a resampler written from the published architecture.
"""

import importlib


def reference_for(family: str):
    module = {
        "minicpmv-2.6": "tests.reference.resampler_family",
        "minicpmv-4.0": "tests.reference.resampler_family",
        "minicpmv-4.5": "tests.reference.resampler_family",
        "minicpmv-4.6": "tests.reference.minicpmv_4_6",
        "minicpmv-4.6-4x": "tests.reference.minicpmv_4_6",
    }[family]
    return importlib.import_module(module).Reference
