"""The package as a user gets it: `pip wheel .`, installed (not editable) into a fresh venv.

The wheel must carry its data files and license, declare its metadata cleanly, install
`convert` without llama.cpp or PyAV, name the missing extra in one line, and run
convert, run, quantize and quality from a folder whose convert.py / quantize.py would
shadow a top-level `convert` or `quantize` package. llama-cpp-python is not compiled
again: its wheel comes from pip's wheel cache (scripts/_setup.sh built it there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHADOWS = {"convert.py": "raise SystemExit('the working directory shadowed our convert package')\n",
           "quantize.py": "raise SystemExit('the working directory shadowed our quantize package')\n",
           "edge_runtime.py": "raise SystemExit('shadowed edge_runtime')\n"}


def _run(cmd, cwd=None, timeout=900, env=None):
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    # a copy without build leftovers: setuptools builds in the tree, and a stale build/ could ship old files
    src = tmp_path_factory.mktemp("src") / "minicpmv-edge"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                              ".pytest_cache", "out", ".whl", ".gl", ".device"))
    r = _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", out, "-v"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("minicpmv_edge-*.whl"))
    assert len(wheels) == 1
    return wheels[0], r.stdout + r.stderr


def test_wheel_builds_without_setuptools_warnings(wheel):
    _, log = wheel
    for needle in ("would be ignored", "SetuptoolsDeprecationWarning", "is deprecated", "_BetaConfiguration"):
        assert needle not in log, needle


def test_wheel_contents_and_metadata(wheel):
    path, _ = wheel
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        top = z.read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
        lic = z.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert top == ["minicpmv_edge"]  # one top-level package: nothing called convert/quantize in site-packages
    assert {n.split("/")[0] for n in names if not n.startswith("minicpmv_edge-")} == {"minicpmv_edge"}
    for data in ("minicpmv_edge/quantize/data/corpus.txt", "minicpmv_edge/data/media_limits.h",
                 "minicpmv_edge/convert/families/minicpmv_4_6.py", "minicpmv_edge/edge_runtime/server/app.py",
                 "minicpmv_edge/edge_runtime/native/clip_encode.cpp",
                 "minicpmv_edge/edge_runtime/native/clip_shim.h"):
        assert data in names, data
    assert lic == (ROOT / "LICENSE").read_text() and "Apache License" in lic and "END OF TERMS AND CONDITIONS" in lic
    assert meta["License-Expression"] == "Apache-2.0"
    assert not meta.get_all("Classifier") or not any(c.startswith("License ::") for c in meta.get_all("Classifier"))
    assert any("Programming Language :: Python :: 3.11" == c for c in meta.get_all("Classifier"))
    assert len(meta.get_all("Project-URL")) >= 2
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not any(r.startswith(("llama-cpp-python", "av", "torch", "fastapi", "pillow")) for r in core), core
    extras = set(meta.get_all("Provides-Extra"))
    assert {"runtime", "video", "server", "vision-export", "fixtures", "test", "all", "dev"} <= extras


def _cached_llama_wheel(dst: Path) -> Path:
    """llama-cpp-python's wheel from pip's cache, so the fresh venv does not compile llama.cpp again."""
    r = _run([sys.executable, "-m", "pip", "cache", "list", "llama_cpp_python", "--format=abspath"])
    found = [Path(x) for x in r.stdout.split() if x.endswith(".whl") and "0.3.36" in x]
    assert found, ("llama-cpp-python 0.3.36's wheel is not in pip's wheel cache (scripts/_setup.sh builds it "
                   "there on first install); without it this test would compile llama.cpp for 13 minutes")
    dst.mkdir(exist_ok=True)
    shutil.copy(found[0], dst / found[0].name)
    return dst


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    r = _run([sys.executable, "-m", "venv", venv])
    assert r.returncode == 0, r.stderr
    r = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel[0]])  # core only
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def shadow_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("userdir")
    for name, text in SHADOWS.items():
        (d / name).write_text(text)
    (d / "quantize").mkdir()  # a folder named like ours, too
    (d / "quantize" / "__init__.py").write_text("raise SystemExit('shadowed quantize folder')\n")
    return d


def _cli(venv: Path, cwd: Path, *args, timeout=900):
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    return _run([venv / "bin" / "python", "-m", "minicpmv_edge", *args], cwd=cwd, timeout=timeout, env=env)


def test_core_install_converts_and_names_missing_extras(store, fresh_venv, shadow_dir, tmp_path):
    py = fresh_venv / "bin" / "python"
    r = _run([py, "-c", "import importlib.util as u; print([m for m in ('llama_cpp', 'av', 'torch', 'PIL') "
                        "if u.find_spec(m)])"])
    assert r.stdout.strip() == "[]", r.stdout + r.stderr  # convert's install brings none of them
    ckpt = store.checkpoint("minicpmv-4.5")
    out = tmp_path / "out"
    r = _cli(fresh_venv, shadow_dir, "convert", ckpt, "-o", out, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout)
    assert Path(summary["text"]).is_file() and Path(summary["mmproj"]).is_file()
    r = _cli(fresh_venv, shadow_dir, "inspect", out)
    assert r.returncode == 0 and "pair: OK" in r.stdout, r.stdout + r.stderr
    cases = [
        (["run", out, "-p", "hi"], "pip install 'minicpmv-edge[runtime]'"),
        (["chat", "-m", summary["text"], "-p", "hi"], "pip install 'minicpmv-edge[runtime]'"),
        (["quantize", summary["text"], tmp_path / "q.gguf", "Q4_K_M"], "pip install 'minicpmv-edge[runtime]'"),
        (["quality", summary["text"], summary["text"]], "pip install 'minicpmv-edge[runtime]'"),
        (["serve", out], "pip install 'minicpmv-edge[server]'"),
        (["demo"], "pip install 'minicpmv-edge[fixtures]'"),
        (["export-vision", ckpt, "--format", "onnx", "-o", tmp_path / "vis"], "pip install 'minicpmv-edge[vision-export]'"),
    ]
    for argv, hint in cases:
        r = _cli(fresh_venv, shadow_dir, *argv, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and hint in lines[0], (argv, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "q.gguf").exists() and not (tmp_path / "vis").exists()
    # the projector quantizer is numpy only: it works without the runtime extra
    r = _cli(fresh_venv, shadow_dir, "quantize", summary["mmproj"], tmp_path / "mm-q8.gguf", "Q8_0")
    assert r.returncode == 0 and (tmp_path / "mm-q8.gguf").is_file(), r.stderr


def test_runtime_extra_runs_quantizes_and_compares(store, fresh_venv, shadow_dir, tmp_path, wheel):
    links = _cached_llama_wheel(tmp_path / "links")
    r = _run([fresh_venv / "bin" / "python", "-m", "pip", "install", "-q", "--find-links", links,
              f"{wheel[0]}[runtime]"], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ckpt = store.checkpoint("minicpmv-4.5")
    out = tmp_path / "out"
    r = _cli(fresh_venv, shadow_dir, "convert", ckpt, "-o", out, "--quant", "Q8_0", "--keep-intermediate",
             "--json", "-t", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    conv = json.loads(r.stdout)
    # the runtime without the video extra: one line naming it, before the model loads
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 64)
    for argv in (["run", out, "--video", clip, "-p", "hi"],
                 ["chat", "-m", conv["text"], "--mmproj", conv["mmproj"], "--video", clip, "-p", "hi"]):
        r = _cli(fresh_venv, shadow_dir, *argv, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (argv, r.stderr)
        assert "needs PyAV, scipy: pip install 'minicpmv-edge[video]'" in lines[0], lines
    r = _run([fresh_venv / "bin" / "python", "-c", "from minicpmv_edge.edge_runtime import MiniCPMV\n"
              f"m = MiniCPMV({conv['text']!r}, {conv['mmproj']!r}, n_ctx=512, n_threads=1)\n"
              "from minicpmv_edge.errors import MissingExtraError\n"
              "try:\n"
              f"    m.chat([{{'role': 'user', 'content': [{{'type': 'video', 'video': {str(clip)!r}}}, 'hi']}}])\n"
              "except MissingExtraError as e:\n"
              "    print('refused:', e)\n"], cwd=shadow_dir)
    assert r.returncode == 0 and "refused: video input needs PyAV: pip install 'minicpmv-edge[video]'" in r.stdout, \
        r.stdout + r.stderr[-2000:]
    r = _cli(fresh_venv, shadow_dir, "run", out, "-p", "Hello", "-n", "4", "--temp", "0", "--json", "-t", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["usage"]["completion_tokens"] >= 1
    f16 = next(p for p in out.iterdir() if p.name.endswith("-text-f16.gguf"))
    q4 = tmp_path / "q4.gguf"
    r = _cli(fresh_venv, shadow_dir, "quantize", f16, q4, "Q4_K_M", "2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["type"] == "Q4_K_M", r.stdout + r.stderr
    r = _cli(fresh_venv, shadow_dir, "quality", f16, q4, "--json", "-t", "2", "--chunk", "32")
    assert r.returncode == 0, r.stdout + r.stderr
    text = json.loads(r.stdout)["text"]  # package data (quantize/data/corpus.txt) was found
    assert text["n_tokens"] > 0 and 0.0 <= text["kl_mean"] and 0.0 <= text["top1"] <= 1.0
    assert Path(conv["text"]).name.endswith("-q8_0.gguf")


def test_setup_script_announces_each_step_and_hides_setuptools_warnings(tmp_path):
    """scripts/_setup.sh (sourced by ./scripts/demo and ./scripts/test) on a fresh clone: every line it
    prints says what it does, the llama.cpp compile is announced before pip starts it, and
    setuptools'/pip's chatter stays out of sight. pip's cache is empty here, so the script must
    take the compile branch; pip then finds llama-cpp-python's wheel in a local folder instead of
    compiling for 13 minutes (what the message announces is pip's choice, not the script's)."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                               ".pytest_cache", "out", ".whl", ".gl", ".device"))
    links = _cached_llama_wheel(tmp_path / "links")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PIP_CACHE_DIR=str(tmp_path / "pip-cache"), PIP_FIND_LINKS=str(links), PYTHON=sys.executable,
               TMPDIR=str(tmp_path))
    r = _run(["bash", "-c", ". scripts/_setup.sh runtime && python -c 'import minicpmv_edge, llama_cpp; "
                            "print(minicpmv_edge.__file__)'"], cwd=clone, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.strip() == str(clone / "minicpmv_edge" / "__init__.py")  # nothing else on stdout; editable
    lines = r.stderr.strip().splitlines()
    assert all(ln.startswith("[setup] ") for ln in lines), r.stderr  # no setuptools/pip warnings
    assert lines[0].startswith("[setup] creating .venv with Python 3."), lines
    compile_at = next(i for i, ln in enumerate(lines) if "pip compiles llama.cpp from source now, about 13 minutes" in ln)
    install_at = lines.index("[setup] installing minicpmv-edge[runtime] into .venv (editable)")
    assert compile_at < install_at, lines  # said before the step that compiles
    assert lines[-1] == "[setup] ready: minicpmv-edge 0.1.0", lines
    assert not list(tmp_path.glob("minicpmv-edge-setup.*.log"))  # the pip log is removed after a success


def test_ci_runs_the_readme_test_command():
    """README's set-up is two commands from a fresh clone, each installing what it needs; CI runs the
    second one exactly as written there."""
    import re

    block = re.search(r"## Set-up: two commands from a fresh clone\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands == ["./scripts/demo", "./scripts/test"], commands
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1]], ci
    for script, extra in (("demo", "fixtures"), ("test", "dev")):
        text = (ROOT / "scripts" / script).read_text()
        assert f'_setup.sh" {extra}' in text, script  # installs what it needs before running
        assert os.access(ROOT / "scripts" / script, os.X_OK), script
