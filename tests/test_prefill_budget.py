"""Prefill ahead (images into the KV cache before the question), per-request image budgets and the
image cost reported before encoding, on an mtmd family (4.5) and a processor-exact one (4.6)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.errors import InputError
from tests.runtime_helpers import noise_image

GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=12)
FAMILIES = ["minicpmv-4.5", "minicpmv-4.6"]


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, store):
    return request.param, store.converted(request.param)


def _load(res, **kw):
    return MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2, **kw)


def _image_span(m, units) -> tuple[int, int]:
    """(context tokens, embedding rows) of the image in `units`: from its <image_id> (or <image>, for a
    family without ids) to its last marker."""
    opening = m.model.tokenize("<image_id>" if m.format.use_image_id else "<image>")
    assert len(opening) == 1
    start = opening[0]
    ends = {m.model.tokenize(t)[0] for t in ("</image>", "</slice>")}
    first = next(i for i, u in enumerate(units) if u == ("tok", start))
    last = max(i for i, u in enumerate(units) if u[0] == "tok" and u[1] in ends)
    span = units[first:last + 1]
    tokens = sum(u[3] if u[0] == "img" else u[2] if u[0] == "emb" else 1 for u in span)
    rows = sum(u[3] for u in span if u[0] == "img")
    return tokens, rows


def test_prefilled_image_leaves_only_the_question(fam):
    family, res = fam
    m = _load(res)
    img = Image.fromarray(noise_image(900, 620, seed=21))
    pre = m.prefill([{"role": "user", "content": [img]}])
    assert pre.images_encoded == m.counters.images_encoded > 0
    # the cache ends on the image's last marker: nothing of the (unknown) question's join is guessed
    last = m.session.units[-1]
    assert last[0] == "tok" and m.model.piece(last[1]) in (b"</slice>", b"</image>")
    assert m.prefill([{"role": "user", "content": [img]}]).n_evaluated == 0  # idempotent
    before = m.counters.snapshot()
    msgs = [{"role": "user", "content": [img, "What is in this picture?"]}]
    r = m.chat(msgs, **GREEDY)
    # the question costs only its own tokens: no encode, and everything before it came from the cache
    assert m.counters.images_encoded == before.images_encoded
    assert r.timings.image_encode_ms == []
    assert r.timings.prompt_tokens_evaluated == r.usage["prompt_tokens"] - pre.n_cached
    # ... which are the question's, the turn's end, the assistant prefix and the thinking prefix
    assert r.timings.prompt_tokens_evaluated <= len(m.model.tokenize("What is in this picture?")) + 16
    cold = _load(res)
    assert cold.chat(msgs, **GREEDY).raw == r.raw  # the same greedy answer as without prefill
    for x in (m, cold):
        x.close()


def test_prefill_after_an_answer_and_of_a_system_prompt(fam):
    family, res = fam
    m = _load(res)
    sys_msgs = [{"role": "system", "content": "You describe pictures."}]
    pre = m.prefill(sys_msgs)
    assert pre.n_cached > 0 and pre.images_encoded == 0
    msgs = sys_msgs + [{"role": "user", "content": "Hello"}]
    r1 = m.chat(msgs, **GREEDY)
    assert r1.timings.prompt_tokens_evaluated < r1.usage["prompt_tokens"]
    img = Image.fromarray(noise_image(448, 448, seed=22))
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": [img]}]
    m.prefill(msgs)  # the next turn's image, while the user types
    enc = m.counters.images_encoded
    msgs[-1] = {"role": "user", "content": [img, "And this one?"]}
    r2 = m.chat(msgs, **GREEDY)
    assert m.counters.images_encoded == enc
    assert r2.timings.prompt_tokens_evaluated <= len(m.model.tokenize("And this one?")) + 16
    if family == "minicpmv-4.6":  # recurrent state: the prefill started from turn 1's snapshot
        assert m.counters.state_restores >= 1
    cold = _load(res)
    assert cold.chat(msgs, **GREEDY).raw == r2.raw
    for x in (m, cold):
        x.close()


@pytest.mark.parametrize("size,budget", [((1344, 1344), {}), ((1344, 1344), {"max_slice_nums": 4}),
                                         ((1000, 600), {"max_slice_nums": 1}), ((1600, 900), {"max_pixels": 600_000})])
def test_image_cost_matches_what_is_encoded(fam, size, budget):
    family, res = fam
    m = _load(res)
    img = Image.fromarray(noise_image(*size, seed=23))
    cost = m.image_cost(img, **budget)
    assert m.image_cost(size, **budget) == cost  # from the size alone, without pixels
    assert m.counters.images_encoded == 0  # reporting encodes nothing
    if "max_pixels" in budget:
        assert cost.width * cost.height <= budget["max_pixels"]
    if budget.get("max_slice_nums") == 1:
        assert cost.n_chunks == 1 and cost.grid == (0, 0)
    if "max_slice_nums" in budget:
        assert cost.n_chunks <= budget["max_slice_nums"] + 1
    m.prefill([{"role": "user", "content": [img]}], **budget)
    assert m.counters.images_encoded == cost.n_chunks
    cols, rows = cost.grid
    assert cost.n_chunks == 1 + cols * rows
    tokens, rows_embd = _image_span(m, m.session.units)
    assert tokens == cost.n_tokens
    if family == "minicpmv-4.5":
        assert rows_embd == cost.n_embd_rows == 64 * cost.n_chunks
    m.close()


def test_budget_is_part_of_the_embedding_key(fam):
    family, res = fam
    m = _load(res)
    img = Image.fromarray(noise_image(1200, 900, seed=24))
    m.prefill([{"role": "user", "content": [img]}], max_slice_nums=2)
    first = m.counters.images_encoded
    m.reset()
    m.prefill([{"role": "user", "content": [img]}])  # the default budget slices differently
    assert m.counters.images_encoded - first == m.image_cost(img).n_chunks
    m.reset()
    m.prefill([{"role": "user", "content": [img]}], max_slice_nums=2)  # seen under this budget: cached
    assert m.counters.images_encoded - first == m.image_cost(img).n_chunks
    m.close()


def test_slice_caps_per_family(store):
    v45 = _load(store.converted("minicpmv-4.5"))
    with pytest.raises(InputError, match="max_slice_nums 36 is over"):
        v45.image_cost((2000, 2000), max_slice_nums=36)
    with pytest.raises(InputError, match="positive integer"):
        v45.chat([{"role": "user", "content": "hi"}], max_slice_nums=0)
    with pytest.raises(InputError, match="max_pixels"):
        v45.image_cost((2000, 2000), max_pixels=10)
    v45.close()
    # the processor-exact families take the model cards' 36 for documents: more than mtmd's 9
    v46 = _load(store.converted("minicpmv-4.6"))
    assert v46.image_cost((2688, 2240), max_slice_nums=36).n_chunks > 10
    v46.close()


def test_exact_family_budget_follows_transformers_processor(store):
    """4.6's per-request max_slice_nums gives the crops transformers' own image processor gives."""
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    m = _load(store.converted("minicpmv-4.6"))
    proc = MiniCPMV4_6ImageProcessorPil()
    for (w, h), n in [((2400, 1500), 16), ((2400, 1500), 3), ((900, 900), 1), ((3000, 1200), 12)]:
        out = proc([np.zeros((h, w, 3), np.uint8)], max_slice_nums=n, return_tensors="np")
        cost = m.image_cost((w, h), max_slice_nums=n)
        assert cost.n_chunks == len(out["target_sizes"]), (w, h, n)
        rows, cols = out["grids"][0] if len(out["target_sizes"]) > 1 else (0, 0)
        assert cost.grid == (cols, rows)
        assert cost.n_embd_rows == int(sum(a * b for a, b in out["target_sizes"])) // 16
    m.close()


def test_interactive_image_is_encoded_before_the_question(store, tmp_path):
    """`/image PATH` in the interactive CLI: the cost is reported and the image encoded at once, so the
    question's turn encodes nothing; a bad path is one error line and the chat goes on."""
    import json
    import subprocess
    import sys

    res = store.converted("minicpmv-4.5")
    img = tmp_path / "a.png"
    Image.fromarray(noise_image(900, 700, seed=25)).save(img)
    stdin = f"/image {tmp_path / 'missing.png'}\n/image {img}\nWhat is in it?\n"
    r = subprocess.run([sys.executable, "-m", "minicpmv_edge", "run", str(res.text_path.parent), "-t", "2", "-n", "4",
                        "--temp", "0", "--json"], input=stdin, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "missing.png" in r.stderr and "error:" in r.stderr
    m = _load(res)
    cost = m.image_cost(img)
    m.close()
    assert f"{cost.width}x{cost.height}, {cost.n_chunks} encoder run(s)" in r.stderr
    assert f"{cost.n_tokens} tokens" in r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["timings"]["image_encode_ms"] == []  # encoded ahead, not in the question's turn
    assert out["timings"]["prompt_tokens_evaluated"] <= 40


def test_server_max_slice_nums_field(store, tmp_path):
    """The `max_slice_nums` / `max_pixels` extra body fields reach the request's image budget; a value the
    model cannot honour is a 400 naming the field."""
    import io

    from tests.test_server import MODEL, Server, data_uri, err, image, user

    buf = io.BytesIO()
    Image.fromarray(noise_image(1200, 900, seed=26)).save(buf, format="PNG")
    uri = data_uri(buf.getvalue())
    folder = store.converted("minicpmv-4.5").text_path.parent
    srv = Server(folder, tmp_path / "server.log", "-t", "2")
    try:
        c = srv.client()
        msgs = [user(image(uri), "What is it?")]
        default = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
        one = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0,
                                        extra_body={"max_slice_nums": 1})
        small = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0,
                                          extra_body={"max_pixels": 448 * 448})
        m = _load(store.converted("minicpmv-4.5"))
        full, unsliced = m.image_cost((1200, 900)), m.image_cost((1200, 900), max_slice_nums=1)
        shrunk = m.image_cost((1200, 900), max_pixels=448 * 448)
        m.close()
        assert default.usage.prompt_tokens - one.usage.prompt_tokens == full.n_tokens - unsliced.n_tokens > 0
        assert default.usage.prompt_tokens - small.usage.prompt_tokens == full.n_tokens - shrunk.n_tokens > 0
        e = err(srv.post({"model": MODEL, "messages": msgs, "max_slice_nums": 36}), 400)
        assert e["param"] == "max_slice_nums" and "at most 9" in e["message"]
        err(srv.post({"model": MODEL, "messages": msgs, "max_pixels": 5}), 400)
    finally:
        srv.stop()


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]


def test_prefill_with_tools_and_template_kwargs_leaves_only_the_question(store):
    """The tool list (in the system turn) and chat_template_kwargs change the rendered prompt: a prefill made
    with the same ones as the later chat leaves only the question to evaluate; one made without them is
    not reused past the point where the prompts part."""
    res = store.converted("minicpmv-4.5")
    m = _load(res)
    img = Image.fromarray(noise_image(448, 448, seed=23))
    q = {"role": "user", "content": [img, "What is the weather like in the picture?"]}
    kw = dict(tools=WEATHER, chat_template_kwargs={"enable_thinking": True})
    pre = m.prefill([{"role": "user", "content": [img]}], **kw)
    assert pre.images_encoded > 0
    r = m.chat([q], **GREEDY, **kw)
    assert r.timings.image_encode_ms == []
    assert r.timings.prompt_tokens_evaluated <= len(m.model.tokenize("What is the weather like in the picture?")) + 16
    cold = _load(res)
    assert cold.chat([q], **GREEDY, **kw).raw == r.raw  # the same greedy answer as without prefill
    # a prefill without the tools renders another system turn: the chat with tools re-evaluates from there
    cold.reset()
    cold.prefill([{"role": "user", "content": [img]}])
    assert cold.chat([q], **GREEDY, **kw).timings.prompt_tokens_evaluated > r.timings.prompt_tokens_evaluated + 50
    with pytest.raises(InputError, match="tools must be a non-empty list"):
        m.prefill([{"role": "user", "content": [img]}], tools=[])
    with pytest.raises(InputError, match="does not use 'no_such_variable'"):
        m.prefill([{"role": "user", "content": [img]}], chat_template_kwargs={"no_such_variable": 1})
    for x in (m, cold):
        x.close()
