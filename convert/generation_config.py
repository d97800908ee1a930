"""`general.sampling.*` from generation_config.json, as llama.cpp's converter writes them.

llama.cpp's gguf-py (metadata.py Metadata.load, gguf_writer.py add_sampling_*)
copies these generation_config.json fields into the GGUF, where llama.cpp's
common sampling defaults read them: key <- field, GGUF type. An absent field is
not written; a field of the wrong kind is an error naming the file and field.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter

from minicpmv_edge.errors import CheckpointError

from .json_files import load_json

# (GGUF key, generation_config fields in lookup order, python type -> writer method)
SAMPLING_FIELDS = (
    ("general.sampling.sequence", ("sequence",), "str"),
    ("general.sampling.top_k", ("top_k",), "int32"),
    ("general.sampling.top_p", ("top_p",), "float32"),
    ("general.sampling.min_p", ("min_p",), "float32"),
    ("general.sampling.xtc_probability", ("xtc_probability",), "float32"),
    ("general.sampling.xtc_threshold", ("xtc_threshold",), "float32"),
    ("general.sampling.temp", ("temperature",), "float32"),
    ("general.sampling.penalty_last_n", ("penalty_last_n",), "int32"),
    ("general.sampling.penalty_repeat", ("penalty_repeat", "repetition_penalty"), "float32"),
    ("general.sampling.mirostat", ("mirostat",), "int32"),
    ("general.sampling.mirostat_tau", ("mirostat_tau",), "float32"),
    ("general.sampling.mirostat_eta", ("mirostat_eta",), "float32"),
)


def read_sampling(src: Path) -> dict[str, tuple[str, object]]:
    """{GGUF key: (type, value)} for the fields generation_config.json sets."""
    path = src / "generation_config.json"
    if not path.is_file():
        return {}
    gen = load_json(path)
    out: dict[str, tuple[str, object]] = {}
    for key, fields, kind in SAMPLING_FIELDS:
        field = next((f for f in fields if gen.get(f) is not None), None)
        if field is None:
            continue
        value = gen[field]
        ok = (isinstance(value, str) if kind == "str"
              else isinstance(value, int) and not isinstance(value, bool) if kind == "int32"
              else isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            want = {"str": "a string", "int32": "an integer", "float32": "a number"}[kind]
            raise CheckpointError(f"field {field!r} is {value!r}, expected {want}", path)
        out[key] = (kind, value if kind == "str" else int(value) if kind == "int32" else float(value))
    return out


def add_sampling(w: GGUFWriter, sampling: dict[str, tuple[str, object]]) -> None:
    for key, (kind, value) in sampling.items():
        {"str": w.add_string, "int32": w.add_int32, "float32": w.add_float32}[kind](key, value)
