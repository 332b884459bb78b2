"""A small CEL evaluator for CRD `x-kubernetes-validations` rules.

Covers what such rules commonly use: literals, field access, indexing, arithmetic, comparisons, `in`,
&& || ! ?:, has(), size(), string functions (startsWith, endsWith, contains, matches, ...), the list macros
all/exists/exists_one/map/filter, and int/uint/double/string/bool conversions. Errors are absorbed by
&& and || the way CEL specifies (false && error == false).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

Node = tuple[Any, ...]


class CELError(Exception):
    pass


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>0x[0-9a-fA-F]+u?|\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?|\d+u?)
  | (?P<str>[rR]?(?:\"\"\"(?:.|\n)*?\"\"\"|'''(?:.|\n)*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'))
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise CELError(f"Syntax error: unexpected character {text[pos]!r} at {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    out.append(("end", ""))
    return out


def _string(tok: str) -> str:
    raw = tok[0] in "rR"
    body = tok[1:] if raw else tok
    q = 3 if body[:3] in ('"""', "'''") else 1
    body = body[q:-q]
    if raw:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i][1]

    def next(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        if self.next()[1] != value:
            raise CELError(f"Syntax error: expected {value!r}")

    def parse(self) -> Node:
        node = self.expr()
        if self.toks[self.i][0] != "end":
            raise CELError(f"Syntax error: unexpected {self.peek()!r}")
        return node

    def expr(self) -> Node:
        cond = self.binary(0)
        if self.peek() == "?":
            self.next()
            then = self.binary(0)
            self.expect(":")
            return ("cond", cond, then, self.expr())
        return cond

    _LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level] and self.toks[self.i][0] in ("op", "id"):
            op = self.next()[1]
            left = (op, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        if self.peek() == "!":
            self.next()
            return ("!", self.unary())
        if self.peek() == "-":
            self.next()
            return ("neg", self.unary())
        return self.member(self.primary())

    def args(self) -> list[Node]:
        out: list[Node] = []
        while self.peek() != ")":
            out.append(self.expr())
            if self.peek() == ",":
                self.next()
        self.expect(")")
        return out

    def member(self, node: Node) -> Node:
        while True:
            if self.peek() == ".":
                self.next()
                name = self.next()[1]
                if self.peek() == "(":
                    self.next()
                    node = ("call", name, node, self.args())
                else:
                    node = ("field", node, name)
            elif self.peek() == "[":
                self.next()
                idx = self.expr()
                self.expect("]")
                node = ("index", node, idx)
            else:
                return node

    def primary(self) -> Node:
        kind, tok = self.next()
        if kind == "num":
            if tok.endswith("u"):
                return ("lit", int(tok[:-1], 0))
            if tok.startswith("0x"):
                return ("lit", int(tok, 16))
            return ("lit", float(tok) if any(c in tok for c in ".eE") else int(tok))
        if kind == "str":
            return ("lit", _string(tok))
        if tok == "(":
            node = self.expr()
            self.expect(")")
            return node
        if tok == "[":
            items: list[Node] = []
            while self.peek() != "]":
                items.append(self.expr())
                if self.peek() == ",":
                    self.next()
            self.expect("]")
            return ("list", items)
        if tok == "{":
            entries: list[tuple[Node, Node]] = []
            while self.peek() != "}":
                k = self.expr()
                self.expect(":")
                entries.append((k, self.expr()))
                if self.peek() == ",":
                    self.next()
            self.expect("}")
            return ("map", entries)
        if kind == "id":
            if tok in ("true", "false"):
                return ("lit", tok == "true")
            if tok == "null":
                return ("lit", None)
            if self.peek() == "(":
                self.next()
                return ("call", tok, None, self.args())
            return ("var", tok)
        raise CELError(f"Syntax error: unexpected {tok!r}")


@lru_cache(maxsize=512)
def compile_expr(text: str) -> Node:
    return _Parser(text).parse()


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    return _eval(compile_expr(text), dict(env))


def _type_name(v: Any) -> str:
    return {bool: "bool", int: "int", float: "double", str: "string", list: "list", dict: "map"}.get(
        type(v), "null_type" if v is None else type(v).__name__
    )


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if not numeric and type(a) is not type(b):
        raise CELError(f"no such overload: {_type_name(a)} {op} {_type_name(b)}")
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and isinstance(a, (str, list)) and type(a) is type(b):
        joined: Any = a
        return joined + b
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
        raise CELError(f"no such overload: {_type_name(a)} {op} {_type_name(b)}")
    if type(a) is not type(b):
        raise CELError(f"no such overload: {_type_name(a)} {op} {_type_name(b)}")
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise CELError("division by zero" if op == "/" else "modulus by zero")
    if isinstance(a, float):
        return a / b if op == "/" else a % b
    q = abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1)
    return q if op == "/" else a - q * b


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        if name not in obj:
            raise CELError(f"no such key: {name}")
        return obj[name]
    raise CELError(f"no such field {name!r} on {_type_name(obj)}")


def _has(node: Node, env: dict[str, Any]) -> bool:
    if node[0] != "field":
        raise CELError("invalid argument to has() macro")
    target = _eval(node[1], env)
    return isinstance(target, Mapping) and node[2] in target


def _macro(name: str, target: Any, args: list[Node], env: dict[str, Any]) -> Any:
    var = args[0][1] if args and args[0][0] == "var" else None
    if var is None:
        raise CELError(f"{name}() needs a variable name")
    items = list(target.keys()) if isinstance(target, Mapping) else target
    if not isinstance(items, list):
        raise CELError(f"{name}() applies to lists and maps")

    def body(item: Any, node: Node) -> Any:
        return _eval(node, {**env, var: item})

    if name == "all":
        return all(body(i, args[1]) is True for i in items)
    if name == "exists":
        return any(body(i, args[1]) is True for i in items)
    if name == "exists_one":
        return sum(1 for i in items if body(i, args[1]) is True) == 1
    if name == "filter":
        return [i for i in items if body(i, args[1]) is True]
    if len(args) == 3:
        return [body(i, args[2]) for i in items if body(i, args[1]) is True]
    return [body(i, args[1]) for i in items]


_METHODS: dict[str, Callable[..., Any]] = {
    "startsWith": lambda s, p: s.startswith(p),
    "endsWith": lambda s, p: s.endswith(p),
    "contains": lambda s, p: p in s,
    "matches": lambda s, p: re.search(p, s) is not None,
    "lowerAscii": lambda s: s.lower(),
    "upperAscii": lambda s: s.upper(),
    "trim": lambda s: s.strip(),
    "split": lambda s, sep, *n: s.split(sep) if not n else s.split(sep, n[0] - 1 if n[0] > 0 else -1),
    "join": lambda items, sep="": sep.join(items),
    "indexOf": lambda s, p: s.find(p),
    "lastIndexOf": lambda s, p: s.rfind(p),
    "replace": lambda s, a, b, *n: s.replace(a, b, *n),
    "substring": lambda s, a, b=None: s[a:b],
    "size": lambda v: len(v),
}


def _convert(name: str, v: Any) -> Any:
    try:
        if name in ("int", "uint"):
            return int(v)
        if name == "double":
            return float(v)
        if name == "string":
            return ("true" if v else "false") if isinstance(v, bool) else str(v)
        if name == "bool":
            return v if isinstance(v, bool) else {"true": True, "false": False}[str(v)]
    except (ValueError, KeyError):
        raise CELError(f"cannot convert {v!r} to {name}") from None
    raise CELError(f"unknown conversion {name}")


def _call(node: Node, env: dict[str, Any]) -> Any:
    _, name, target_node, args = node
    if target_node is None and name == "has":
        return _has(args[0], env)
    if target_node is not None and name in ("all", "exists", "exists_one", "map", "filter"):
        return _macro(name, _eval(target_node, env), args, env)
    values = [_eval(a, env) for a in args]
    if target_node is None:
        if name == "size":
            return len(values[0])
        if name in ("int", "uint", "double", "string", "bool"):
            return _convert(name, values[0])
        if name == "type":
            return _type_name(values[0])
        if name == "matches":
            return re.search(values[1], values[0]) is not None
        raise CELError(f"undeclared reference to '{name}'")
    target = _eval(target_node, env)
    fn = _METHODS.get(name)
    if fn is None:
        raise CELError(f"found no matching overload for '{name}'")
    try:
        return fn(target, *values)
    except (TypeError, AttributeError, re.error) as e:
        raise CELError(f"found no matching overload for '{name}': {e}") from None


def _logic(op: str, left: Node, right: Node, env: dict[str, Any]) -> bool:
    decisive = op == "||"
    err: CELError | None = None
    try:
        a = _eval(left, env)
        if a is decisive:
            return bool(decisive)
    except CELError as e:
        err = e
    b = _eval(right, env)
    if b is decisive:
        return bool(decisive)
    if err is not None:
        raise err
    if not isinstance(a, bool) or not isinstance(b, bool):
        raise CELError(f"no such overload: {op} on non-bool")
    return not decisive


def _eval(node: Node, env: dict[str, Any]) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "var":
        if node[1] not in env:
            raise CELError(f"undeclared reference to '{node[1]}'")
        return env[node[1]]
    if kind == "field":
        return _field(_eval(node[1], env), node[2])
    if kind == "index":
        target, idx = _eval(node[1], env), _eval(node[2], env)
        try:
            return target[idx]
        except (KeyError, IndexError, TypeError):
            raise CELError(f"index out of range or no such key: {idx!r}") from None
    if kind == "list":
        return [_eval(n, env) for n in node[1]]
    if kind == "map":
        return {_eval(k, env): _eval(v, env) for k, v in node[1]}
    if kind == "call":
        return _call(node, env)
    if kind == "cond":
        c = _eval(node[1], env)
        if not isinstance(c, bool):
            raise CELError("conditional needs a bool")
        return _eval(node[2] if c else node[3], env)
    if kind == "!":
        v = _eval(node[1], env)
        if not isinstance(v, bool):
            raise CELError("no such overload: !" + _type_name(v))
        return not v
    if kind == "neg":
        v = _eval(node[1], env)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CELError("no such overload: -" + _type_name(v))
        return -v
    if kind in ("&&", "||"):
        return _logic(kind, node[1], node[2], env)
    a, b = _eval(node[1], env), _eval(node[2], env)
    if kind == "in":
        if isinstance(b, (list, Mapping)):
            return a in b
        raise CELError("no such overload: in " + _type_name(b))
    if kind in ("==", "!=", "<", "<=", ">", ">="):
        return _compare(kind, a, b)
    return _arith(kind, a, b)
