"""Converted fixture pairs that carry the real chat templates.

The prompt tests must run on the checkpoints' own templates (4.5: tokenizer_config.json of
openbmb/MiniCPM-V-4_5; 4.6: chat_template.jinja of openbmb/MiniCPM-V-4.6; 2.6: Qwen2-Instruct's
ChatML with its default system prompt, as the real-checkpoints README states). When a fixture
already carries that template this is the session's ordinary conversion; otherwise the fixture is
copied (weights linked, not copied) with the real template written where its tokenizer keeps one,
and converted once per session.
"""

from __future__ import annotations

import json
import shutil

from tests.template_reference import real_template

QWEN2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def template_of(family: str) -> str | None:
    if family == "minicpmv-2.6":
        return QWEN2_CHATML
    if family in ("minicpmv-4.5", "minicpmv-4.6"):
        return real_template(family)
    return None  # 4.0: no public tokenizer files; the fixture's reconstruction is what there is


def converted(store, family: str):
    want = template_of(family)
    src = store.checkpoint(family)
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    jinja = src / "chat_template.jinja"
    have = cfg.get("chat_template") or (jinja.read_text() if jinja.exists() else None)
    if want is None or have == want:
        return store.converted(family)
    key = ("real-template", family)
    if key not in store._conv:
        from minicpmv_edge.convert import convert

        dst = store.root / f"ckpt-{family}-real-template"
        if not dst.exists():
            dst.mkdir()
            for f in src.iterdir():
                if f.suffix == ".safetensors":
                    (dst / f.name).symlink_to(f)
                else:
                    shutil.copy(f, dst / f.name)
            cfg["chat_template"] = want
            (dst / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
            if jinja.exists():
                (dst / "chat_template.jinja").write_text(want, encoding="utf-8")
        store._conv[key] = convert(dst, store.root / f"out-{family}-real-template", outtype="f16")
    return store._conv[key]
