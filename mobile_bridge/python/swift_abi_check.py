"""Checks the Swift wrapper without a Swift compiler (there is none on Linux CI here).

    python swift_abi_check.py [SWIFT_FILE ...]     # default: ios/Sources/MiniCPMVEdge/*.swift

1. Parse: tree-sitter-swift parses each file without an ERROR or MISSING node.
2. C interop, against include/minicpmv_edge.h parsed with tree-sitter-c:
   - every `mcv_*` function the Swift code calls is declared in the header, with the same number
     of arguments;
   - `mcv_*()` used as a value is a struct of the header (Swift's zero initializer), or a C enum
     built from one raw value (`mcv_role(UInt32(..))`);
   - every other `mcv_*` / `MCV_*` name (types, enum constants, macros) is declared there;
   - `x.field` on a variable bound to a header struct (`var p = mcv_model_params()`,
     `_ info: mcv_slice_info`) names a field of that struct;
   - a closure stored as a header callback type (`let f: mcv_encode_fn = { a, b in ... }`) takes
     the callback's number of parameters.
Prints one line per problem; exit 1 when there is one.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tree_sitter
import tree_sitter_c
import tree_sitter_swift

BRIDGE = Path(__file__).resolve().parents[1]
HEADER = BRIDGE / "include" / "minicpmv_edge.h"
SWIFT_DIR = BRIDGE / "ios" / "Sources" / "MiniCPMVEdge"
C_NAME = re.compile(r"^(mcv_|MCV_)")


@dataclass
class CApi:
    functions: dict[str, int] = field(default_factory=dict)  # name -> arity
    structs: dict[str, set[str]] = field(default_factory=dict)  # typedef name -> fields
    callbacks: dict[str, int] = field(default_factory=dict)  # function-pointer typedef -> arity
    enums: set[str] = field(default_factory=set)  # enum typedef names
    constants: set[str] = field(default_factory=set)  # enum values, #defines
    types: set[str] = field(default_factory=set)  # every typedef name

    def known(self, name: str) -> bool:
        return name in self.functions or name in self.types or name in self.constants


def _parser(language) -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(language))


def _walk(node):
    yield node
    for ch in node.children:
        yield from _walk(ch)


def _text(node) -> str:
    return node.text.decode()


def _arity(params) -> int:
    decls = [p for p in params.named_children if p.type in ("parameter_declaration", "variadic_parameter")]
    if len(decls) == 1 and _text(decls[0]).strip() == "void":
        return 0
    return len(decls)


def _declarator_name(d):
    while d is not None and d.type not in ("identifier", "type_identifier", "field_identifier"):
        d = d.child_by_field_name("declarator") or next(
            (c for c in d.named_children if c.type.endswith("declarator") or c.type.endswith("identifier")), None)
    return _text(d) if d is not None else None


def _function_declarator(d):
    while d is not None and d.type != "function_declarator":
        d = d.child_by_field_name("declarator") or next(
            (c for c in d.named_children if c.type.endswith("declarator")), None)
    return d


def parse_header(path: Path = HEADER) -> CApi:
    # MCV_API expands to an attribute that tree-sitter cannot see through: blank it (same length,
    # positions unchanged) where it opens a declaration; the #define lines keep it.
    text = re.sub(r"(?m)^MCV_API\b", " " * len("MCV_API"), path.read_text(encoding="utf-8"))
    # the C view of the header: drop the C++ linkage braces (lines kept, so line numbers hold)
    text = re.sub(r'(?m)^#ifdef __cplusplus\n(extern "C" \{|\})\n#endif$', "\n\n", text)
    tree = _parser(tree_sitter_c.language()).parse(text.encode())
    errors = [n for n in _walk(tree.root_node) if n.type == "ERROR" or n.is_missing]
    if errors:
        raise SystemExit(f"{path}:{errors[0].start_point[0] + 1}: tree-sitter-c cannot parse the header")
    api = CApi()
    for n in _walk(tree.root_node):
        if n.type == "preproc_def":
            api.constants.add(_text(n.child_by_field_name("name")))
        elif n.type == "enumerator":
            api.constants.add(_text(n.child_by_field_name("name")))
        elif n.type == "declaration":
            fd = _function_declarator(n.child_by_field_name("declarator"))
            if fd is not None:
                api.functions[_declarator_name(fd.child_by_field_name("declarator"))] = _arity(
                    fd.child_by_field_name("parameters"))
        elif n.type == "type_definition":
            decl = n.child_by_field_name("declarator")
            name = _declarator_name(decl)
            api.types.add(name)
            spec = n.child_by_field_name("type")
            fd = _function_declarator(decl)
            if fd is not None:
                api.callbacks[name] = _arity(fd.child_by_field_name("parameters"))
            elif spec.type == "struct_specifier" and spec.child_by_field_name("body") is not None:
                api.structs[name] = {_declarator_name(f.child_by_field_name("declarator"))
                                     for f in spec.child_by_field_name("body").named_children
                                     if f.type == "field_declaration"}
            elif spec.type == "enum_specifier":
                api.enums.add(name)
    return api


def _callee_and_args(call):
    callee = call.named_children[0]
    suffix = next((c for c in call.named_children if c.type == "call_suffix"), None)
    args = next((c for c in suffix.named_children if c.type == "value_arguments"), None) if suffix else None
    n_args = len([a for a in args.named_children if a.type == "value_argument"]) if args is not None else 0
    trailing = suffix is not None and any(c.type == "lambda_literal" for c in suffix.named_children)
    return callee, n_args + int(trailing), args


SCOPES = ("function_declaration", "init_declaration", "deinit_declaration", "lambda_literal", "source_file")


def _scope(node):
    node = node.parent
    while node is not None and node.type not in SCOPES:
        node = node.parent
    return node


def _lookup(struct_vars: dict, node, name: str):
    scope = _scope(node)
    while scope is not None:
        if (scope.id, name) in struct_vars:
            return struct_vars[(scope.id, name)]
        scope = _scope(scope)
    return None


def check_swift(path: Path, api: CApi) -> list[str]:
    src = path.read_bytes()
    tree = _parser(tree_sitter_swift.language()).parse(src)
    where = lambda n: f"{path.name}:{n.start_point[0] + 1}"  # noqa: E731
    problems = [f"{where(n)}: Swift syntax error near {_text(n)[:40]!r}" for n in _walk(tree.root_node)
                if n.type == "ERROR" or n.is_missing]
    struct_vars: dict[tuple, str] = {}  # (scope id, variable) -> header struct
    checked_calls = set()
    for n in _walk(tree.root_node):
        if n.type == "call_expression":
            callee, n_args, _ = _callee_and_args(n)
            if callee.type != "simple_identifier" or not C_NAME.match(_text(callee)):
                continue
            name = _text(callee)
            checked_calls.add(callee.id)
            if name in api.functions:
                if n_args != api.functions[name]:
                    problems.append(f"{where(n)}: {name} takes {api.functions[name]} argument(s) in "
                                    f"{HEADER.name}, the Swift call passes {n_args}")
            elif name in api.structs:
                if n_args != 0:
                    problems.append(f"{where(n)}: {name}(...) with {n_args} argument(s): use {name}() and set fields")
            elif name in api.enums:
                if n_args != 1:
                    problems.append(f"{where(n)}: {name} is a C enum: build it from one raw value")
            else:
                problems.append(f"{where(n)}: {name} is not declared in {HEADER.name}")
        elif n.type == "property_declaration":
            var = n.child_by_field_name("name")
            value = n.child_by_field_name("value")
            annot = next((c for c in n.named_children if c.type == "type_annotation"), None)
            var_name = _text(var.named_children[0]) if var is not None and var.named_children else None
            if value is not None and value.type == "call_expression":
                callee = value.named_children[0]
                if _text(callee) in api.structs and var_name:
                    struct_vars[(_scope(n).id, var_name)] = _text(callee)
            if annot is not None:
                tname = _text(annot.child_by_field_name("name")).rstrip("?!")
                if tname in api.structs and var_name:
                    struct_vars[(_scope(n).id, var_name)] = tname
                if tname in api.callbacks and value is not None and value.type == "lambda_literal":
                    params = [p for p in _walk(value) if p.type == "lambda_parameter"]
                    if len(params) != api.callbacks[tname]:
                        problems.append(f"{where(value)}: a {tname} closure takes {api.callbacks[tname]} "
                                        f"parameter(s), this one {len(params)}")
        elif n.type == "parameter":
            names = [c for c in n.children if c.type == "simple_identifier"]
            types = [c for c in n.named_children if c.type in ("user_type", "optional_type")]
            if names and types and _text(types[-1]).rstrip("?!") in api.structs:
                # a parameter belongs to the function it declares
                struct_vars[(_scope(n).id, _text(names[-1]))] = _text(types[-1]).rstrip("?!")
    for n in _walk(tree.root_node):
        if n.type in ("simple_identifier", "type_identifier") and C_NAME.match(_text(n)):
            if n.id not in checked_calls and not api.known(_text(n)):
                problems.append(f"{where(n)}: {_text(n)} is not declared in {HEADER.name}")
        elif n.type == "navigation_expression":
            target = n.child_by_field_name("target")
            suffix = n.child_by_field_name("suffix")
            if target is None or suffix is None or target.type != "simple_identifier":
                continue
            struct = _lookup(struct_vars, n, _text(target))
            member = suffix.child_by_field_name("suffix")
            if struct and member is not None and _text(member) not in api.structs[struct]:
                problems.append(f"{where(n)}: {struct} has no field {_text(member)}")
    return problems


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted(SWIFT_DIR.glob("*.swift"))
    api = parse_header()
    problems = [p for f in files for p in check_swift(f, api)]
    for p in problems:
        print(p)
    n_calls = sum(1 for f in files for n in _walk(_parser(tree_sitter_swift.language()).parse(f.read_bytes()).root_node)
                  if n.type == "call_expression" and _text(n.named_children[0]) in api.functions)
    print(f"swift_abi_check: {len(files)} file(s), {n_calls} C call(s) against {len(api.functions)} header "
          f"functions, {len(problems)} problem(s)")
    return 1 if problems or not files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
