"""docs/llama-cpp-conventions.md against our parser and llama.cpp's own sources: each documented
default is ours and llama.cpp's (common/common.h), each flag name exists on both sides
(common/arg.cpp, tools/quantize/quantize.cpp), llama-quantize's types are all ours with llama.h's
numbers, its options we lack are refused, and llama-mtmd-cli's interactive commands work here too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from minicpmv_edge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "llama-cpp-conventions.md").read_text()


@pytest.fixture(scope="module")
def llama_src() -> Path:
    from bench.llama_tools import llama_source

    src = llama_source()
    assert (src / "common" / "common.h").is_file(), src
    return src


def _section(title: str) -> str:
    return DOC.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows(title: str) -> list[list[str]]:
    lines = [ln for ln in _section(title).splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines[1:] if not ln.startswith("|---")]


def _ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _subparsers():
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices


def _action(command: str, flag: str):
    return next(a for a in _subparsers()[command]._actions if flag in a.option_strings)


def _struct_field(src: Path, dotted: str) -> str:
    """The initializer of `struct.field` in common/common.h."""
    struct, field = dotted.split(".")
    text = (src / "common" / "common.h").read_text()
    body = text.split(f"struct {struct} {{", 1)[1]
    depth, end = 1, 0
    for end, ch in enumerate(body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            break
    m = re.search(rf"\b{field}\s*=\s*([^;]+);", body[:end])
    assert m, dotted
    return m.group(1).strip()


def _num(text: str):
    text = text.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    return float(text.removesuffix("f"))


def _ours(flag: str):
    """Our default for a flag of chat/run (sampling flags left unset fall back to SamplingOptions)."""
    from minicpmv_edge.edge_runtime import LoadOptions
    from minicpmv_edge.edge_runtime.sampling import SamplingOptions

    if flag == "LoadOptions.n_batch":
        return LoadOptions().n_batch
    action = _action("chat", flag)
    if action.default is not None:
        return action.default
    return getattr(SamplingOptions(), {"temp": "temperature"}.get(action.dest, action.dest))


def test_documented_defaults_are_ours_and_llama_cpps(llama_src):
    rows = _rows("Defaults")
    assert len(rows) >= 10
    for flag_cell, ours, theirs, field, why in rows:
        flags = [t for t in _ticks(flag_cell) if t.startswith("-")]
        flag = flags[-1] if flags else next(t for t in _ticks(flag_cell) if t.startswith("LoadOptions."))
        assert _num(str(_ours(flag))) == _num(ours), (flag, _ours(flag), ours)
        value = _struct_field(llama_src, _ticks(field)[0])
        assert _num(value) == _num(theirs), (flag, value, theirs)
        assert _num(ours) != _num(theirs), f"{flag}: the same default does not belong in the differences table"
        assert len(why) > 40, flag


def test_same_defaults_paragraph(llama_src):
    for flag, field in (("--repeat-last-n", "penalty_last_n"), ("--typical", "typ_p"),
                        ("--presence-penalty", "penalty_present"), ("--frequency-penalty", "penalty_freq")):
        assert _num(str(_ours(flag))) == _num(_struct_field(llama_src, f"common_params_sampling.{field}")), flag
    assert _action("serve", "--port").default == int(_struct_field(llama_src, "common_params.port")) == 8080
    assert _struct_field(llama_src, "common_params.hostnames") == '{"127.0.0.1"}'  # llama-server binds this first
    assert _action("serve", "--host").default == "127.0.0.1"
    assert _action("chat", "--seed").default == -1  # -1: LLAMA_DEFAULT_SEED, a random seed (api-fields.md)


def test_documented_names_exist_on_both_sides(llama_src):
    ours = {s for p in _subparsers().values() for a in p._actions for s in a.option_strings}
    theirs_text = "".join((llama_src / f).read_text() for f in ("common/arg.cpp", "tools/quantize/quantize.cpp"))
    theirs_text += (llama_src / "convert_hf_to_gguf.py").read_text()
    rows = _rows("Names")
    assert len(rows) >= 12
    for mine, theirs, _ in rows:
        for cell, known in ((mine, ours), (theirs, None)):
            for tick in _ticks(cell):
                for tok in tick.split():
                    if not tok.startswith("-"):
                        continue
                    if known is not None:
                        assert tok in known, f"{tok} is not a flag of ours"
                    else:
                        assert f'"{tok}"' in theirs_text or f"'{tok}'" in theirs_text, f"{tok} is not llama.cpp's"


def test_aliases_mean_the_same(llama_src):
    p = build_parser()
    assert p.parse_args(["chat", "-m", "x.gguf", "-sys", "be brief"]).system == "be brief"
    assert p.parse_args(["chat", "-m", "x.gguf", "--system-prompt", "be brief"]).system == "be brief"
    assert p.parse_args(["run", "out", "--gpu-layers", "3"]).n_gpu_layers == 3
    assert p.parse_args(["run", "out", "--mmproj-offload"]).mmproj_gpu is True


def test_llama_quantize_options_we_lack_are_refused(llama_src, capsys):
    refused = next(r for r in _rows("Names") if r[0] == "—")
    flags = [t for t in _ticks(refused[1])]
    src = (llama_src / "tools" / "quantize" / "quantize.cpp").read_text()
    handled = set(re.findall(r'strcmp\(argv\[arg_idx\], "(--[\w-]+)"\) == 0', src))
    ours = {s for a in _subparsers()["quantize"]._actions for s in a.option_strings}
    assert handled - ours == set(flags), "every llama-quantize option is either ours or listed as refused"
    for flag in flags:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["quantize", "in.gguf", "out.gguf", "Q4_K_M", flag])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err


def test_every_llama_quantize_type_is_ours_with_llama_h_numbers(llama_src):
    from minicpmv_edge.quantize.llama import ALIASES, FTYPES

    src = (llama_src / "tools" / "quantize" / "quantize.cpp").read_text()
    options = dict(re.findall(r'\{\s*"(\w+)",\s*(LLAMA_FTYPE_\w+)', src))
    header = (llama_src / "include" / "llama.h").read_text()
    enum = {k: int(v) for k, v in re.findall(r"\b(LLAMA_FTYPE_\w+)\s*=\s*(\d+)", header)}
    assert set(options) == set(FTYPES) | set(ALIASES), set(options) ^ (set(FTYPES) | set(ALIASES))
    for name, ftype in options.items():
        if name in ALIASES:
            assert options[ALIASES[name]] == ftype, name
        else:
            assert FTYPES[name] == enum[ftype], name


def test_llama_mtmd_cli_interactive_commands_are_ours(llama_src):
    from minicpmv_edge.cli.interactive import HELP

    src = (llama_src / "tools" / "mtmd" / "mtmd-cli.cpp").read_text()
    theirs = set(re.findall(r'line == "(/\w+)"', src))
    assert {"/image", "/clear", "/exit", "/quit"} <= theirs | {"/image"}, theirs
    for cmd in theirs - {"/audio"}:
        assert re.search(rf"{cmd}\b", HELP), cmd
        assert f"`{cmd}" in _section("Names") or f"{cmd}`" in DOC, cmd


def test_convert_quant_takes_an_imatrix(store, tmp_path):
    """`convert --quant IQ2_XXS --imatrix FILE` as `llama-quantize --imatrix FILE IN OUT IQ2_XXS`: the
    importance matrix reaches llama.cpp's quantizer (its keys in the output, IQ2_XXS tensors)."""
    import json

    from gguf import GGMLQuantizationType as Q

    from minicpmv_edge.gguf_info import read_info
    from tests.hostile_helpers import run_cli
    from tests.test_quantize import write_imatrix_gguf

    res = store.converted("minicpmv-4.5")
    imx = write_imatrix_gguf(res.text_path, tmp_path / "imatrix.gguf")
    out = tmp_path / "o"
    rc, stdout, err = run_cli("convert", store.checkpoint("minicpmv-4.5"), "-o", out, "--quant", "IQ2_XXS",
                              "--imatrix", imx, "-t", "1", "--json")
    assert rc == 0, err
    info = read_info(json.loads(stdout)["text"])
    assert info.get("quantize.imatrix.file") == str(imx)
    assert any(t.ggml_type == Q.IQ2_XXS for t in info.tensors)
    rc, _, err = run_cli("convert", store.checkpoint("minicpmv-4.5"), "-o", tmp_path / "o2", "--quant", "IQ2_XXS")
    assert rc == 2 and "importance matrix" in err and not (tmp_path / "o2").exists(), err
