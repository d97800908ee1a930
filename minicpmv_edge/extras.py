"""Optional dependency groups (pip extras) and the one-line error when one is missing.

`convert`, `inspect` and the mmproj quantizer need only the core dependencies; the
rest lives in extras (pyproject.toml). Every place that imports an optional module goes
through `need()` (or checks `missing()` first), so a user without it reads one line such
as "video needs PyAV: pip install 'minicpmv-edge[video]'" instead of a traceback, and
the check runs before any output is written.
"""

from __future__ import annotations

import importlib
import importlib.util

from .errors import MissingExtraError

# extra -> (import name, pip name) of every module it provides that the code imports
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "runtime": (("llama_cpp", "llama-cpp-python"), ("PIL", "pillow")),
    "video": (("av", "PyAV"), ("scipy", "scipy")),
    "server": (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("pydantic", "pydantic")),
    "fixtures": (("torch", "torch"), ("transformers", "transformers"), ("tokenizers", "tokenizers"),
                 ("safetensors", "safetensors")),
    "onnx": (("onnxruntime", "onnxruntime"),),
    "vision-export": (("torch", "torch"), ("onnx", "onnx"), ("onnxscript", "onnxscript"),
                      ("onnxruntime", "onnxruntime")),
    "coreml": (("torch", "torch"), ("coremltools", "coremltools")),
}
# the pip extra that installs each group (CoreML export ships in vision-export)
PIP_EXTRA = {"coreml": "vision-export"}


def missing(extra: str) -> list[str]:
    """pip names of the extra's modules that cannot be found (without importing them)."""
    out = []
    for module, pip_name in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(pip_name)
    return out


def require(extra: str, what: str) -> None:
    """Raise MissingExtraError naming the extra when any of its modules is absent."""
    gone = missing(extra)
    if gone:
        raise MissingExtraError(f"{what} needs {', '.join(gone)}: pip install 'minicpmv-edge[{PIP_EXTRA.get(extra, extra)}]'")


def need(module: str, extra: str, what: str):
    """Import `module`, or raise MissingExtraError naming the extra that installs it."""
    if module.startswith("llama_cpp"):
        from .native_libs import share_cxx_runtime

        share_cxx_runtime()  # before llama.cpp's libraries load (native_libs.py)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the module is there but one of *its* imports is broken: a real bug, keep the traceback
        pip_name = next((p for m, p in EXTRAS[extra] if m == top), top)
        raise MissingExtraError(f"{what} needs {pip_name}: pip install 'minicpmv-edge[{PIP_EXTRA.get(extra, extra)}]'") \
            from None
