"""Hostile checkpoints: `convert` answers each with one line naming the file and the field,
exit code 2, and writes nothing (part of the hostile-input battery, with test_hostile_*.py)."""

from __future__ import annotations

import json
import os

import pytest

from tests.hostile_helpers import assert_one_line_error, leftovers, linked_copy, run_cli, safetensors_bytes

F32 = lambda n: {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}  # noqa: E731

# (case id, replaced file, its content, words the one-line error must contain)
SAFETENSORS = [
    ("header-is-array", [1, 2], ["a JSON list, expected an object"]),
    ("entry-is-string", {"w": "x"}, ["'w'", "header entry is a str"]),
    ("no-data-offsets", {"w": {"dtype": "F32", "shape": [2]}}, ["'w'", "data_offsets must be"]),
    ("negative-offsets", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, ["data_offsets must be"]),
    ("one-offset", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, ["data_offsets must be"]),
    ("negative-shape", {"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, ["shape must be"]),
    ("bool-shape", {"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, ["shape must be"]),
    ("dtype-is-list", {"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, ["unsupported dtype"]),
    ("end-before-start", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, ["byte range"]),
    ("overlapping", {"a": F32(2), "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
     ["'a' and 'b' overlap"]),
    ("metadata-is-list", {"__metadata__": [1], "w": F32(2)}, ["__metadata__"]),
]


@pytest.fixture(scope="module")
def ckpt45(store):
    return store.checkpoint("minicpmv-4.5")


@pytest.fixture(scope="module")
def ckpt46(store):
    return store.checkpoint("minicpmv-4.6")


def _convert(src, out):
    rc, _, err = run_cli("convert", src, "-o", out)
    return rc, err


@pytest.mark.parametrize("case, header, needles", SAFETENSORS, ids=[c[0] for c in SAFETENSORS])
def test_hostile_safetensors_headers(ckpt45, tmp_path, case, header, needles):
    src = linked_copy(ckpt45, tmp_path / "ckpt", {"model.safetensors": safetensors_bytes(header, b"\0" * 16)})
    rc, err = _convert(src, tmp_path / "out")
    assert_one_line_error(rc, err, "model.safetensors", *needles)
    assert leftovers(tmp_path / "out") == []


def test_hostile_safetensors_raw_bytes(ckpt45, tmp_path):
    cases = {
        "huge-header-length": (b"\xff" * 8 + b"{}", "header length out of range"),
        "header-not-utf8": (safetensors_bytes(b"\xff\xfe{}"), "not JSON"),
        "shorter-than-8": (b"abc", "shorter than its 8-byte header length"),
    }
    for name, (data, needle) in cases.items():
        src = linked_copy(ckpt45, tmp_path / name, {"model.safetensors": data})
        rc, err = _convert(src, tmp_path / f"out-{name}")
        assert_one_line_error(rc, err, "model.safetensors", needle)
        assert leftovers(tmp_path / f"out-{name}") == []


def test_hostile_safetensors_fifo_does_not_hang(ckpt45, tmp_path):
    src = linked_copy(ckpt45, tmp_path / "ckpt", {"model.safetensors": None})
    os.mkfifo(src / "model.safetensors")  # open() for reading would wait for a writer forever
    rc, err = _convert(src, tmp_path / "out")
    assert_one_line_error(rc, err, "model.safetensors", "not a regular file")


INDEX = [
    ("not-utf8", b'{"weight_map": {"w": "\xff.safetensors"}}', ["not UTF-8"]),
    ("map-is-list", json.dumps({"weight_map": ["model.safetensors"]}), ["weight_map"]),
    ("path-escapes", json.dumps({"weight_map": {"w": "../model.safetensors"}}), ["not a file in this folder"]),
    ("file-is-number", json.dumps({"weight_map": {"w": 5}}), ["must be a file name"]),
    ("not-json", "{weight_map", ["not JSON"]),
]


@pytest.mark.parametrize("case, text, needles", INDEX, ids=[c[0] for c in INDEX])
def test_hostile_index(ckpt45, tmp_path, case, text, needles):
    src = linked_copy(ckpt45, tmp_path / "ckpt", {"model.safetensors.index.json": text})
    rc, err = _convert(src, tmp_path / "out")
    assert_one_line_error(rc, err, "model.safetensors.index.json", *needles)
    assert leftovers(tmp_path / "out") == []


def _config(ckpt, edit):
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    return json.dumps(cfg)


CONFIG = [
    ("hidden-size-words", "4.5", lambda c: c.update(hidden_size="one hundred"),
     ["hidden_size must be an integer", '"one hundred"']),
    ("null-heads", "4.5", lambda c: c.update(num_attention_heads=None), ["num_attention_heads must be an integer, got null"]),
    ("billion-layers", "4.5", lambda c: c.update(num_hidden_layers=1e9), ["num_hidden_layers = 1000000000 is out of range"]),
    ("zero-interval", "4.6", lambda c: c["text_config"].update(full_attention_interval=0),
     ["text_config.full_attention_interval = 0 is out of range"]),
    ("nan-rope", "4.5", lambda c: c.update(rope_theta=float("nan")), ["rope_theta must be a number", "nan"]),
    ("vision-config-list", "4.5", lambda c: c.update(vision_config=[1]), ["vision_config must be an object"]),
    ("layer-types-short", "4.6", lambda c: c["text_config"].update(layer_types=["full_attention"]),
     ["text_config.layer_types has 1 entries"]),
    ("tie-yes", "4.5", lambda c: c.update(tie_word_embeddings="yes"), ["tie_word_embeddings must be true or false"]),
    ("vocab-negative", "4.6", lambda c: c["text_config"].update(vocab_size=-5), ["text_config.vocab_size = -5"]),
    ("architectures-str", "4.5", lambda c: c.update(architectures="MiniCPMV"), ["architectures must be a list"]),
]


@pytest.mark.parametrize("case, fam, edit, needles", CONFIG, ids=[c[0] for c in CONFIG])
def test_hostile_config(ckpt45, ckpt46, tmp_path, case, fam, edit, needles):
    ckpt = ckpt45 if fam == "4.5" else ckpt46
    src = linked_copy(ckpt, tmp_path / "ckpt", {"config.json": _config(ckpt, edit)})
    rc, err = _convert(src, tmp_path / "out")
    assert_one_line_error(rc, err, "config.json", *needles)
    assert leftovers(tmp_path / "out") == []


def test_hostile_config_files(ckpt45, tmp_path):
    for name, text, needle in (("not-json", "{oops", "cannot parse"), ("array", "[1, 2]", "expected a JSON object"),
                               ("not-utf8", b"\xff\xfe", "cannot parse")):
        src = linked_copy(ckpt45, tmp_path / name, {"config.json": text})
        rc, err = _convert(src, tmp_path / f"out-{name}")
        assert_one_line_error(rc, err, "config.json", needle)


def _tokenizer(ckpt, edit):
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    edit(tj)
    return json.dumps(tj)


TOKENIZER = [
    ("no-vocab", lambda t: t["model"].pop("vocab"), ["model.vocab must be"]),
    ("string-ids", lambda t: t["model"].update(vocab={"a": "0", "b": "1"}), ["ids must be integers"]),
    ("no-model", lambda t: t.pop("model"), ["lacks the 'model' object"]),
    ("added-tokens-strings", lambda t: t.update(added_tokens=["<image>"]), ["added_tokens must be"]),
]


@pytest.mark.parametrize("case, edit, needles", TOKENIZER, ids=[c[0] for c in TOKENIZER])
def test_hostile_tokenizer_json(ckpt46, tmp_path, case, edit, needles):
    src = linked_copy(ckpt46, tmp_path / "ckpt", {"tokenizer.json": _tokenizer(ckpt46, edit)})
    rc, err = _convert(src, tmp_path / "out")
    assert_one_line_error(rc, err, "tokenizer.json", *needles)
    assert leftovers(tmp_path / "out") == []


def test_hostile_convert_arguments(ckpt45, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["convert", afile, "-o", tmp_path / "o1"], ["afile", "is not a directory"]),
        (["convert", ckpt45, "-o", afile], ["afile", "is a file, expected a folder"]),
        (["convert", ckpt45, "-o", tmp_path / "o2", "--quant", "Q9_Z"], ["unknown quantization type 'Q9_Z'"]),
        (["convert", ckpt45, "-o", tmp_path / "o3", "--imatrix", afile], ["--imatrix needs --quant"]),
        (["convert", ckpt45, "-o", tmp_path / "o4", "--quant", "IQ2_XXS"], ["IQ2_XXS needs an importance matrix"]),
        (["convert", ckpt45, "-o", tmp_path / "o5", "--family", "9.9"], ["unknown family '9.9'"]),
    ]
    for argv, needles in cases:
        rc, _, err = run_cli(*argv)
        assert_one_line_error(rc, err, *needles)
    for o in ("o1", "o2", "o3", "o4", "o5"):
        assert leftovers(tmp_path / o) == []


def test_export_vision_failure_leaves_nothing(store, tmp_path, monkeypatch):
    """A failure after the first graph is written (a full disk, Ctrl-C) leaves no vision-*.onnx
    without metadata.json: everything is written to a temporary folder and moved in at the end."""
    from minicpmv_edge.convert.vision_export import export_vision, onnx_export
    from minicpmv_edge.errors import OutputError

    real, calls = onnx_export.export_onnx, []

    def fails_on_the_second(*a, **kw):
        if calls:
            raise OutputError("disk full while writing; no partial output was kept", a[1])
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(onnx_export, "export_onnx", fails_on_the_second)
    out = tmp_path / "vis"
    with pytest.raises(OutputError, match="disk full"):
        export_vision(store.checkpoint("minicpmv-4.5"), out, "onnx", grids=[(32, 32)], precisions=("fp32", "fp16"),
                      verify=False)
    assert calls and out.is_dir() and list(out.iterdir()) == []  # no graph, no metadata, no temporary folder
