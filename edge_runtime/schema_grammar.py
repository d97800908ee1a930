"""JSON schema -> GBNF, with llama-cpp-python's converter (llama_cpp.llama_grammar.SchemaConverter).

We add only what that converter lacks or gets wrong for output that must parse and validate:

* strings: its `char` rule allows raw control characters (a raw newline inside a string), which
  JSON forbids; ours excludes U+0000..U+001F and U+007F (escapes stay allowed). Its `dot` rule (regex
  `.` in patterns) could emit `"` or `\\` unescaped inside the string; ours excludes them.
* integers: `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` are ignored there (a TODO in
  its source); we generate the digit ranges (`_int_range`).
* numbers: non-negative integer bounds (the common `"minimum": 0`) likewise; other number bounds are refused.
* patterns: `\\d` and `\\w` are rewritten to classes GBNF knows; escapes GBNF would misread are refused.
* every keyword is checked first: one the grammar cannot enforce (`multipleOf`, `uniqueItems`, `not`,
  formats other than date/time/date-time/uuid, ...) raises InputError naming it and where it is, instead
  of producing output that does not validate.
"""

from __future__ import annotations

import json
import math
import re

from minicpmv_edge.errors import InputError

# keywords that only annotate (no constraint on the value)
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly", "$defs", "definitions"}
_BY_KIND = {
    "any": {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
}
_KNOWN = set().union(*_BY_KIND.values()) | _ANNOTATIONS
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_DIGITS = 15  # the converter's own cap on unbounded integer parts (up to 16 digits)

CHAR_RULE = r'[^"\\\x00-\x1F\x7F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
DOT_RULE = r'[^"\\\x00-\x1F\x7F]'


def json_schema_to_gbnf(schema) -> str:
    """A GBNF grammar (root rule `root`) for JSON documents that validate against `schema`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InputError(f"json_schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InputError(f"json_schema must be a JSON object, got {type(schema).__name__}")
    _check(schema, "$")
    conv = _converter()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = conv.resolve_refs(json.loads(json.dumps(schema)), "input")
        conv.visit(resolved, "")
    except InputError:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(f"json_schema cannot be turned into a grammar: {exc or type(exc).__name__}") from None
    for name, rule in (("char", CHAR_RULE), ("dot", DOT_RULE)):
        if name in conv._rules:
            conv._rules[name] = rule
    return conv.format_grammar()


def _check(node, where: str) -> None:
    if isinstance(node, bool):
        raise InputError(f"json_schema: a boolean schema at {where} is not supported")
    if not isinstance(node, dict):
        raise InputError(f"json_schema: {where} must be an object, got {type(node).__name__}")
    for key in node:
        if key not in _KNOWN:
            raise InputError(f"json_schema: keyword {key!r} at {where} is not supported")
    t = node.get("type")
    for one in (t if isinstance(t, list) else [t] if t is not None else []):
        if one not in _TYPES:
            raise InputError(f"json_schema: type {one!r} at {where} is not a JSON schema type")
    fmt = node.get("format")
    if fmt is not None and fmt not in _FORMATS:
        raise InputError(f"json_schema: format {fmt!r} at {where} is not supported "
                         f"(supported: {', '.join(sorted(_FORMATS))})")
    if "pattern" in node and ("minLength" in node or "maxLength" in node):
        raise InputError(f"json_schema: pattern together with minLength/maxLength at {where} is not supported")
    if "pattern" in node:
        _check_pattern(node["pattern"], where)
    bounds = [k for k in _BY_KIND["number"] if k in node]
    if bounds and t == "number":
        _number_bounds(node, where)
    elif bounds and t != "integer":
        raise InputError(f"json_schema: {bounds[0]} at {where} needs \"type\": \"integer\" or \"number\"")
    add = node.get("additionalProperties")
    if isinstance(add, dict):
        _check(add, f"{where}.additionalProperties")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (node.get(key) or {}).items():
            _check(sub, f"{where}.{key}.{name}")
    items = node.get("items")
    if isinstance(items, dict):
        _check(items, f"{where}.items")
    for key in ("prefixItems", "anyOf", "oneOf", "allOf") + (("items",) if isinstance(items, list) else ()):
        for i, sub in enumerate(node.get(key) or []):
            _check(sub, f"{where}.{key}[{i}]")
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise InputError(f"json_schema: $ref {ref!r} at {where}: only local references (#/...) are supported")


def _check_pattern(p, where: str) -> None:
    if not isinstance(p, str) or not (p.startswith("^") and p.endswith("$")):
        raise InputError(f"json_schema: pattern at {where} must be a string anchored with ^ and $")
    bad = re.search(r'\\[^dw.\[\](){}*+?|^$\-/]|"|\(\?', p)
    if bad:
        raise InputError(f"json_schema: pattern at {where}: {bad.group(0)!r} is not supported "
                         "(use character classes; \\d and \\w are accepted)")


def _number_bounds(node, where: str) -> None:
    lo, hi = node.get("minimum"), node.get("maximum")
    ok = set(node) & {"exclusiveMinimum", "exclusiveMaximum"} == set() and lo is not None and \
        isinstance(lo, (int, float)) and lo == 0 and hi is None
    if not ok:
        raise InputError(f"json_schema: number bounds at {where}: only \"minimum\": 0 is supported for "
                         "\"type\": \"number\" (use \"type\": \"integer\" for other ranges)")


def _bounds(node) -> tuple[int | None, int | None]:
    lo = hi = None
    for key, strict, is_lo in (("minimum", False, True), ("exclusiveMinimum", True, True),
                               ("maximum", False, False), ("exclusiveMaximum", True, False)):
        v = node.get(key)
        if v is None or isinstance(v, bool):
            continue
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"json_schema: {key} must be a finite number, got {v!r}")
        if is_lo:
            b = math.floor(v) + 1 if strict else math.ceil(v)
            lo = b if lo is None else max(lo, b)
        else:
            b = math.ceil(v) - 1 if strict else math.floor(v)
            hi = b if hi is None else min(hi, b)
    if lo is not None and hi is not None and lo > hi:
        raise InputError(f"json_schema: no integer lies in [{lo}, {hi}]")
    cap = 10 ** (_DIGITS + 1) - 1
    for b in (lo, hi):
        if b is not None and abs(b) > cap:
            raise InputError(f"json_schema: integer bound {b} has more than {_DIGITS + 1} digits")
    return lo, hi


def _same_length(x: str, y: str) -> str:
    """GBNF for the decimal strings of one length between x and y inclusive."""
    if x == y:
        return f'"{x}"' if x else ""
    if x[0] == y[0]:
        return f'"{x[0]}" ' + _wrap(_same_length(x[1:], y[1:]))
    n = len(x) - 1
    alts = []
    lo_d, hi_d = int(x[0]), int(y[0])
    if x[1:] != "0" * n:
        alts.append(f'"{x[0]}" ' + _wrap(_same_length(x[1:], "9" * n)))
        lo_d += 1
    tail_hi = None
    if y[1:] != "9" * n:
        tail_hi = f'"{y[0]}" ' + _wrap(_same_length("0" * n, y[1:]))
        hi_d -= 1
    if lo_d <= hi_d:
        first = f'"{lo_d}"' if lo_d == hi_d else f"[{lo_d}-{hi_d}]"
        alts.append(" ".join([first] + ["[0-9]"] * n))
    if tail_hi:
        alts.append(tail_hi)
    return " | ".join(alts)


def _wrap(expr: str) -> str:
    return f"({expr})" if "|" in expr else expr


def _non_negative(a: int, b: int | None) -> list[str]:
    top = b if b is not None else 10 ** (_DIGITS + 1) - 1
    alts = []
    for n in range(len(str(a)), len(str(top)) + 1):
        lo, hi = max(a, 10 ** (n - 1) if n > 1 else 0), min(top, 10 ** n - 1)
        if lo <= hi:
            alts.append(_same_length(str(lo), str(hi)))
    return alts


def _int_range(lo: int | None, hi: int | None) -> str:
    """GBNF for JSON integers (no leading zeros, no -0) in [lo, hi]; None = unbounded on that side."""
    alts = []
    if lo is None or lo < 0:
        neg_lo = 1 if hi is None or hi >= 0 else -hi  # magnitudes of the negative part
        neg_hi = None if lo is None else -lo
        alts += [f'"-" {_wrap(a)}' for a in _non_negative(neg_lo, neg_hi)]
    if hi is None or hi >= 0:
        alts += _non_negative(max(lo or 0, 0), hi)
    return " | ".join(_wrap(a) for a in alts)


_CONVERTER = None


def _converter():
    """llama-cpp-python's converter, subclassed where it lacks a rule (built on first use: importing
    llama_cpp loads its shared libraries)."""
    global _CONVERTER
    if _CONVERTER is not None:
        return _CONVERTER
    from llama_cpp.llama_grammar import PRIMITIVE_RULES, RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):
        def visit(self, schema, name):
            t = schema.get("type")
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            if t == "integer" and any(k in schema for k in _BY_KIND["number"]):
                lo, hi = _bounds(schema)
                return self._add_rule(rule_name, f"({_int_range(lo, hi)}) space")
            if t == "number" and schema.get("minimum") == 0:  # _number_bounds allowed nothing else
                for dep in ("integral-part", "decimal-part"):
                    self._add_primitive(dep, PRIMITIVE_RULES[dep])
                return self._add_rule(rule_name, 'integral-part ("." decimal-part)? ([eE] [-+]? integral-part)? space')
            if t in (None, "string") and isinstance(schema.get("pattern"), str):
                schema = {**schema, "pattern": _json_safe_pattern(schema["pattern"])}
            return super().visit(schema, name)

    _CONVERTER = Converter
    return Converter


def _json_safe_pattern(p: str) -> str:
    """\\d / \\w -> classes GBNF reads; negated classes also exclude what a JSON string cannot hold raw."""
    out, i, in_class = [], 0, False
    while i < len(p):
        c = p[i]
        if c == "\\" and i + 1 < len(p) and p[i + 1] in "dw":
            cls = "0-9" if p[i + 1] == "d" else "0-9A-Za-z_"
            out.append(cls if in_class else f"[{cls}]")
            i += 2
            continue
        if c == "\\" and i + 1 < len(p):
            out.append(p[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            negated = p[i + 1:i + 2] == "^"
            out.append("[^" if negated else "[")
            i += 2 if negated else 1
            if negated:
                out.append('"\\\\\\x00-\\x1F\\x7F')
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def schemas_to_gbnf(schemas: dict[str, dict], xml_strings: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Several schemas in one grammar: (rules, {key: its rule name}) for callers that assemble their own
    root (tool calls). `xml_strings`: the schemas are tool parameters written as Qwen3-Coder XML
    (`<parameter=P>\\nVALUE\\n</parameter>\\n`, VALUE raw text for strings, JSON otherwise)."""
    for key, schema in schemas.items():
        if not isinstance(schema, dict):
            raise InputError(f"{key}: the parameters must be a JSON schema object")
        _check(schema, key)
    conv = _converter()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    roots = {}
    try:
        for key, schema in schemas.items():
            resolved = conv.resolve_refs(json.loads(json.dumps(schema)), key)
            roots[key] = _xml_params(conv, resolved, key) if xml_strings else conv.visit(resolved, key)
    except InputError:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(f"tool parameters cannot be turned into a grammar: {exc or type(exc).__name__}") from None
    for name, rule in (("char", CHAR_RULE), ("dot", DOT_RULE)):
        if name in conv._rules:
            conv._rules[name] = rule
    return dict(conv._rules), roots


def _xml_params(conv, schema: dict, key: str) -> str:
    from llama_cpp.llama_grammar import _build_repetition

    conv._rules["xml-char"] = '[^<] | "<" [^/]'  # a raw value never holds "</" (it would end the parameter)
    props = schema.get("properties") or {}
    if not props:  # any parameters
        return conv._add_rule(f"{key}-any", '( "<parameter=" [A-Za-z0-9_.-]+ ">\\n" xml-char* "\\n</parameter>\\n" )*')
    required = set(schema.get("required") or [])
    parts = []
    for name, sub in props.items():
        where = f"{key}.properties.{name}"
        if _is_text(sub):
            if "pattern" in sub or "format" in sub:
                raise InputError(f"{where}: pattern/format of a string parameter is not supported with XML tool "
                                 "calls (the value is raw text)")
            if "enum" in sub:
                value = " | ".join(json.dumps(v) for v in sub["enum"])
            elif "minLength" in sub or "maxLength" in sub:  # counted characters: no "<" at all (one char each)
                conv._rules["xml-plain"] = "[^<]"
                value = _build_repetition("xml-plain", sub.get("minLength", 0), sub.get("maxLength"))
            else:
                value = "xml-char*"
            value = conv._add_rule(f"{key}-{name}-text", value or '""')
        elif sub.get("type") == "boolean":  # the template writes a bool with `string`: True / False
            value = conv._add_rule(f"{key}-{name}-bool", '"true" | "false" | "True" | "False"')
        else:
            value = conv.visit(sub, f"{key}-{name}")
        head = json.dumps(f"<parameter={name}>\n")
        one = conv._add_rule(f"{key}-{name}-param", f'{head} {value} "\\n</parameter>\\n"')
        parts.append(one if name in required else f"{one}?")
    return conv._add_rule(f"{key}-params", " ".join(parts))


def _is_text(schema: dict) -> bool:
    t = schema.get("type")
    if t == "string":
        return True
    return t is None and "enum" in schema and all(isinstance(v, str) for v in schema["enum"])
