"""The shared CLI conventions: -t on every command that computes, -v after the subcommand,
defaults in --help, numbers range-checked by the parser (exit 2, one line naming the flag)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minicpmv_edge.cli import build_parser

COMPUTING = ("convert", "chat", "run", "quantize", "quality", "serve")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True,
                          timeout=timeout)


def _sub(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def _minimal(name: str) -> list[str]:
    return {"convert": ["src", "-o", "out"], "chat": ["-m", "x.gguf"], "run": ["out"],
            "quantize": ["a.gguf", "b.gguf"], "quality": ["a.gguf", "b.gguf"], "serve": ["out"],
            "inspect": ["a.gguf"], "demo": [], "export-vision": ["src", "--format", "onnx", "-o", "o"]}[name]


@pytest.mark.parametrize("name", COMPUTING)
def test_threads_on_every_computing_command(name):
    args = build_parser().parse_args([name, *_minimal(name), "-t", "3"])
    assert args.threads == 3
    args = build_parser().parse_args([name, *_minimal(name), "--threads", "5"])
    assert args.threads == 5


@pytest.mark.parametrize("name", ["convert", "inspect", "chat", "run", "quantize", "quality", "serve", "demo",
                                  "export-vision"])
def test_verbose_before_and_after_the_subcommand(name):
    assert build_parser().parse_args(["-v", name, *_minimal(name)]).verbose is True
    assert build_parser().parse_args([name, *_minimal(name), "-v"]).verbose is True
    assert build_parser().parse_args([name, *_minimal(name)]).verbose is False


def test_help_shows_defaults():
    text = _sub("chat").format_help()
    for needle in ("(default: 4096)", "(default: 512)", "(default: auto)", "(default: 1.0)"):  # video: the model's
        assert needle in text, needle
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 8080)" in _sub("serve").format_help()
    assert "(default: 128)" in _sub("quality").format_help()


@pytest.mark.parametrize("name", ["convert", "inspect", "chat", "run", "quantize", "quality", "serve", "demo",
                                  "export-vision"])
def test_each_option_states_one_default(name):
    from minicpmv_edge.cli._common import HelpFormatter

    fmt = HelpFormatter(name)
    for action in _sub(name)._actions:
        text = fmt._expand_help(action) if action.help else ""
        assert text.count("(default:") <= 1, (action.option_strings, text)
    threads = next(a for a in _sub("convert")._actions if a.dest == "threads")
    assert "(default: min(4, cores) converting, physical cores quantizing;" in HelpFormatter("c")._expand_help(threads)


def test_quantize_takes_llama_quantize_positional_form():
    args = build_parser().parse_args(["quantize", "in.gguf", "out.gguf", "Q4_K_M", "4"])
    assert (args.pos_type, args.pos_threads) == ("Q4_K_M", 4)
    from minicpmv_edge.cli.quantize_cmd import _merge_positional
    from minicpmv_edge.errors import InputError

    _merge_positional(args)
    assert (args.type, args.threads) == ("Q4_K_M", 4)
    clash = build_parser().parse_args(["quantize", "in.gguf", "out.gguf", "Q4_K_M", "--type", "Q8_0"])
    with pytest.raises(InputError, match="--type Q8_0 disagrees with the positional TYPE Q4_K_M"):
        _merge_positional(clash)


@pytest.mark.parametrize("argv, flag", [
    (["quantize", "a.gguf", "b.gguf", "-t", "100000"], "-t/--threads"),
    (["quantize", "a.gguf", "b.gguf", "Q4_K_M", "0"], "THREADS"),
    (["chat", "-m", "x.gguf", "--temp", "nan"], "--temp"),
    (["chat", "-m", "x.gguf", "--temp", "-1"], "--temp"),
    (["chat", "-m", "x.gguf", "--top-p", "inf"], "--top-p"),
    (["run", "out", "-c", "-5"], "-c/--ctx-size"),
    (["run", "out", "--max-slices", "65"], "--max-slices"),
    (["run", "out", "--fps", "nan"], "--fps"),
    (["serve", "out", "--port", "99999"], "--port"),
    (["serve", "out", "--max-body-mb", "nan"], "--max-body-mb"),
    (["serve", "out", "--max-body-mb", "0"], "--max-body-mb"),
    (["serve", "out", "--request-timeout", "-3"], "--request-timeout"),
    (["quality", "a.gguf", "b.gguf", "--chunk", "1"], "--chunk"),
])
def test_numbers_out_of_range_exit_2_with_one_line(argv, flag):
    r = cli(*argv, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"minicpmv-edge {argv[0]}: error: argument {flag}") and "Traceback" not in r.stderr


def test_swapped_commands_say_which_fits(store, tmp_path):
    from tests.hostile_helpers import assert_one_line_error, run_cli

    res = store.converted("minicpmv-4.5")
    folder = res.text_path.parent
    rc, out, err = run_cli("run", res.text_path, "-p", "hi")
    assert_one_line_error(rc, err, res.text_path.name, "`run` takes a converted folder",
                          f"minicpmv-edge chat -m {res.text_path} --mmproj MMPROJ.gguf")
    rc, out, err = run_cli("chat", "-m", folder, "--mmproj", res.mmproj_path, "-p", "hi")
    assert_one_line_error(rc, err, "`chat -m` takes a GGUF file", f"minicpmv-edge run {folder}")
    assert out == ""
    rc, out, err = run_cli("serve", res.text_path)
    assert_one_line_error(rc, err, "`serve` takes a converted folder", f"minicpmv-edge serve -m {res.text_path}")
    rc, out, err = run_cli("serve", "-m", folder)
    assert_one_line_error(rc, err, "`serve -m` takes a GGUF file", f"minicpmv-edge serve {folder}")


def test_serve_on_a_busy_port_fails_before_announcing(store):
    import socket

    folder = store.converted("minicpmv-4.5").text_path.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = cli("serve", str(folder), "--port", str(port), "-t", "1", timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "serving" not in r.stdout  # never announced
    lines = r.stderr.strip().splitlines()
    assert lines == [f"minicpmv-edge serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"], lines
