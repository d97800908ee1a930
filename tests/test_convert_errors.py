"""Bad input: one line naming the file and the problem, non-zero exit, no .gguf left."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minicpmv_edge.convert import convert
from minicpmv_edge.errors import CheckpointError, Interrupted, OutputError, UnsupportedModelError


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicpmv_edge", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def no_outputs(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if ".gguf" in p.name]


@pytest.fixture
def ckpt(store, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(store.checkpoint("minicpmv-4.5", shards=2), dst)
    return dst


def test_missing_shard(ckpt, tmp_path):
    shard = sorted(ckpt.glob("model-*.safetensors"))[1]
    shard.unlink()
    r = cli("convert", str(ckpt), "-o", str(tmp_path / "out"))
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and shard.name in line[0] and "missing" in line[0], r.stderr
    assert no_outputs(tmp_path / "out")


def test_truncated_shard(ckpt, tmp_path):
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as e:
        convert(ckpt, tmp_path / "out")
    assert shard.name in str(e.value)
    assert no_outputs(tmp_path / "out")


def test_shape_disagrees_with_config(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 384
    (ckpt / "config.json").write_text(json.dumps(cfg))
    r = cli("convert", str(ckpt), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    msg = r.stderr.strip()
    assert "mlp" in msg and "config.json implies" in msg and ".safetensors" in msg, msg
    assert no_outputs(tmp_path / "out")


def test_unknown_architecture(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(architectures=["FooForCausalLM"], model_type="foo")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError) as e:
        convert(ckpt, tmp_path / "out")
    msg = str(e.value)
    assert "FooForCausalLM" in msg and "minicpmv-2.6" in msg and "minicpmv-4.5" in msg and "config.json" in msg


def test_output_directory_not_creatable(ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = cli("convert", str(ckpt), "-o", str(blocker / "out"))
    assert r.returncode != 0 and "a_file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _limit_file_size():  # runs in the child: a 200 kB file-size cap stands in for a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_full_disk_leaves_nothing(ckpt, tmp_path):
    out = tmp_path / "out"
    r = cli("convert", str(ckpt), "-o", str(out), preexec_fn=_limit_file_size)
    assert r.returncode != 0
    assert "disk full" in r.stderr and ".gguf" in r.stderr, r.stderr
    assert no_outputs(out), list(out.iterdir())
    assert not (out / "manifest.json").exists()


def test_interrupt_midway_removes_partial_files(ckpt, tmp_path):
    out = tmp_path / "out"
    seen = []

    def progress(kind, i, n, t):
        seen.append((kind, i))
        if kind == "mmproj" and i == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        convert(ckpt, out, progress=progress)
    assert ("text", 0) in seen  # the text file had been completed before the interrupt
    assert no_outputs(out) and not any(p.name.startswith(".") for p in out.iterdir())


def test_bad_outtype_and_missing_dir(tmp_path):
    r = cli("convert", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "nope" in r.stderr
    with pytest.raises(OutputError):
        from minicpmv_edge.convert.writer import write_gguf

        write_gguf(tmp_path / "missing" / "x.gguf", "llama", lambda w: None, [])
