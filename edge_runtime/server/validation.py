"""pydantic's validation errors as one OpenAI-style line a client can act on.

pydantic names the branches it tried in a location (`messages.0.user.content.str`, the
union branch `str`, the discriminator value `user`, `list[...]`); a client knows its own
JSON, not our model classes. So a location keeps only the keys and indexes that exist in
the request body, and "Input should be ..." becomes "must be ...".
"""

from __future__ import annotations

import re


def public_location(body, loc) -> list[str]:
    """The part of a pydantic `loc` that names something in the request body as sent."""
    parts = [p for p in loc if p != "body"]
    out: list[str] = []
    node = body
    for k, part in enumerate(parts):
        if isinstance(node, dict) and isinstance(part, str):
            if part in node:
                node = node[part]
                out.append(part)
                continue
            if any(isinstance(q, str) and q in node for q in parts[k + 1:]) or part in node.values():
                continue  # a discriminator value or union branch name; the body's own key comes later
            if not re.search(r"[\[\]-]", part) and part not in _TYPE_NAMES:
                out.append(part)  # a required field the body lacks
            break
        if isinstance(node, list):
            if isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
                out.append(str(part))
            continue  # a branch name such as list[...] before the index
        break  # a scalar: what follows are branch names (str, int, ...)
    return out


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "null"}


def public_message(err: dict) -> str:
    ctx = err.get("ctx") or {}
    if err.get("type") == "union_tag_invalid":
        field = str(ctx.get("discriminator", "type")).strip("'")
        return f"{field} {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    if err.get("type") == "union_tag_not_found":
        return f"needs a {str(ctx.get('discriminator', 'type')).strip(chr(39))} field"
    text = re.sub(r"^Input should be ", "must be ", err.get("msg") or "invalid")
    text = re.sub(r"^Field required$", "is required", text)
    text = re.sub(r"^Value error, ", "", text)
    return text


def describe(errs: list[dict], body) -> tuple[str, str, int]:
    """(location, problem, how many distinct problems) of the most specific error."""
    if not errs:
        return "", "invalid request", 0
    placed = [(".".join(public_location(body, e.get("loc", ()))), e) for e in errs]
    where, first = max(placed, key=lambda p: len(p[0].split(".")) if p[0] else 0)
    same = [e for w, e in placed if w == where]
    if len(same) > 1 and all((e.get("msg") or "").startswith("Input should be") for e in same):
        # one value failed every branch of a union (content: string | [parts])
        kinds = sorted({re.sub(r"^Input should be (a valid |an? )?", "", e["msg"]).split(" ")[0] for e in same})
        problem = f"has the wrong type (expected {' or '.join(kinds)})"
    else:
        problem = public_message(first)
    # problems elsewhere (not the union branches that led to this one)
    others = {w for w, _ in placed if w != where and not where.startswith(w + ".") and not (w == "" and where)}
    return where, problem, 1 + len(others)
