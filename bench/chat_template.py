"""Benchmark: prompt rendering from the real chat templates, ours vs transformers' apply_chat_template.

Ours (edge_runtime.prompt.PromptFormat.render) renders the template twice per request: the prompt,
and once more with a probe answer to find the generation-only tail the next turn drops (what the
session snapshots before). CPU time per conversation (the machine is shared). The anchor is transformers' tokenizer.apply_chat_template(tokenize=False)
on the same messages (4.5: the model card's string content; 4.6: content parts). Prints the median
time per conversation of a 10-turn chat and the ratio ours / transformers.

    python bench/chat_template.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def conversation(turns: int):
    msgs = [{"role": "system", "content": "You are a careful assistant."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}: what about the picture, part {i}?"})
        msgs.append({"role": "assistant", "content": f"<think>\nreasoning {i}\n</think>\n\nAnswer {i}."})
    msgs.append({"role": "user", "content": "And finally?"})
    return msgs


def timed(a, b, repeat: int) -> tuple[float, float]:
    """Median CPU ms (process time: the machine is shared, wall time drifts with load) of `a` and
    of `b`, run alternately."""
    a(), b()
    sa, sb = [], []
    for _ in range(repeat):
        for fn, out in ((a, sa), (b, sb)):
            t0 = time.process_time()
            fn()
            out.append((time.process_time() - t0) * 1e3)
    return statistics.median(sa), statistics.median(sb)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    import tempfile

    from minicpmv_edge import model_facts
    from minicpmv_edge.chat_template import ChatTemplate
    from minicpmv_edge.edge_runtime.media import MediaLimits
    from minicpmv_edge.edge_runtime.messages import normalize
    from minicpmv_edge.edge_runtime.prompt import PromptFormat
    from tests import template_reference as ref

    msgs = conversation(10)
    with tempfile.TemporaryDirectory() as tmp:
        anchors = {"minicpmv-4.5": ref.tokenizer_45(), "minicpmv-4.6": ref.processor_46(Path(tmp)).tokenizer}
        for family, tok in anchors.items():
            fmt = PromptFormat(model_facts.by_name(family), ChatTemplate(ref.real_template(family)))
            turns = normalize(msgs, MediaLimits())
            ours, theirs = timed(lambda: fmt.render(turns, ref.MARKER, False),
                                 lambda: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                                 enable_thinking=False), args.repeat)
            print(f"{family}: 21-message conversation, ours {ours:.3f} ms (2 renders), transformers "
                  f"{theirs:.3f} ms (1 render); ratio ours/transformers {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
