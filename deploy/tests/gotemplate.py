"""A deliberately small renderer for the Go-template subset the switchyard chart uses.

`helm` cannot be installed here (not in Debian's archive, PyPI or npm), so the chart's
templates are rendered by this instead and the output validated against the Kubernetes
schemas. It knows only: `{{ .Values.x.y }}`, `.Release.Name`, `.Chart.*`, `.` inside
`range`, `if` / `if not` / `range` / `end`, the pipes `quote` and `nindent N`, `toYaml X`,
and the `{{-` / `-}}` trim markers. Anything else raises, so a template that outgrows the
subset fails the test instead of rendering wrongly.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        body = m.group(2)
        if not body.startswith("/*"):
            out.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = text[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, closing: bool = False):
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        head = value.split(None, 1)
        if head[0] in ("if", "range"):
            body, i = _parse(tokens, i + 1, closing=True)
            nodes.append((head[0], head[1], body))
        elif head[0] == "end":
            if not closing:
                raise TemplateError("unexpected end")
            return nodes, i + 1
        elif head[0] in ("else", "define", "template", "include", "with", "block"):
            raise TemplateError(f"unsupported action: {value}")
        else:
            nodes.append(("expr", value))
            i += 1
    if closing:
        raise TemplateError("missing end")
    return nodes, i


def _lookup(path: str, scope: dict[str, Any], dot: Any) -> Any:
    if path == ".":
        return dot
    if not path.startswith("."):
        raise TemplateError(f"unsupported operand: {path}")
    value: Any = scope
    for part in path[1:].split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip("\n")


def _eval(expr: str, scope: dict[str, Any], dot: Any) -> Any:
    stages = [s.strip() for s in expr.split("|")]
    first = stages[0].split()
    if first[0] == "toYaml" and len(first) == 2:
        value: Any = _to_yaml(_lookup(first[1], scope, dot))
    elif first[0] == "not" and len(first) == 2:
        value = not _lookup(first[1], scope, dot)
    elif len(first) == 1:
        value = _lookup(first[0], scope, dot)
    else:
        raise TemplateError(f"unsupported expression: {expr}")
    for stage in stages[1:]:
        words = stage.split()
        if words == ["quote"]:
            value = '"' + str("" if value is None else value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif len(words) == 2 and words[0] == "nindent":
            pad = " " * int(words[1])
            value = "\n" + "\n".join(pad + line if line else line for line in str(value).rstrip("\n").split("\n"))
        else:
            raise TemplateError(f"unsupported pipe: {stage}")
    return value


def _render(nodes, scope: dict[str, Any], dot: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            value = _eval(node[1], scope, dot)
            if value is None:
                raise TemplateError(f"{node[1]} has no value")
            out.append(str(value).lower() if isinstance(value, bool) else str(value))
        elif node[0] == "if":
            if _eval(node[1], scope, dot):
                out.append(_render(node[2], scope, dot))
        elif node[0] == "range":
            for item in _eval(node[1], scope, dot) or []:
                out.append(_render(node[2], scope, item))
    return "".join(out)


def render(template: str, values: dict[str, Any], release: str, chart: dict[str, Any]) -> str:
    nodes, _ = _parse(_tokens(template))
    scope = {
        "Values": values,
        "Release": {"Name": release, "Namespace": "default"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    }
    return _render(nodes, scope, scope)
