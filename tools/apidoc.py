#!/usr/bin/env python3
"""
Write docs/api.md, the API for humans, from hpchat/web/openapi.json.

    python tools/apidoc.py           # write docs/api.md
    python tools/apidoc.py --check   # exit 1 if docs/api.md is not up to date
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "hpchat", "web", "openapi.json")
DOC = os.path.join(ROOT, "docs", "api.md")
METHODS = ("get", "put", "post", "delete", "patch")


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _type(schema: dict) -> str:
    """
    A short name for C{schema}: a component's name, or its type with its constraints.
    """
    if "$ref" in schema:
        return f"[{schema['$ref'].rsplit('/', 1)[1]}](#{schema['$ref'].rsplit('/', 1)[1].lower()})"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " \\| ".join(_type(s) for s in schema[key])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " \\| ".join(kind)
    if kind == "array":
        if "prefixItems" in schema:
            kind = "[" + ", ".join(_type(s) for s in schema["prefixItems"]) + "]"
        else:
            kind = f"array of {_type(schema.get('items', {}))}"
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict) \
            and not schema.get("properties"):
        kind = f"object of {_type(schema['additionalProperties'])}"
    limits = []
    if "pattern" in schema:
        limits.append(f"`{schema['pattern']}`")
    for key, text in (("minimum", ">= {}"), ("maximum", "<= {}"), ("minLength", "length >= {}"),
                      ("minItems", "{} items or more"), ("maxItems", "at most {} items"),
                      ("default", "default {}")):
        if key in schema:
            limits.append(text.format(schema[key]))
    return kind + (f" ({', '.join(limits)})" if limits else "")


def _fields(doc: dict, schema: dict) -> list[str]:
    schema = _resolve(doc, schema)
    required = set(schema.get("required", ()))
    lines = []
    for name, field in schema.get("properties", {}).items():
        note = field.get("description", "")
        optional = "" if name in required else " (optional)"
        lines.append(f"| `{name}`{optional} | {_type(field)} | {note} |")
    return lines


def render(doc: dict) -> str:
    """
    The Markdown text of C{doc}, an OpenAPI 3.1 document.
    """
    info = doc["info"]
    out = [f"# The {info['title']} API, version {info['version']}", "",
           "Generated from `hpchat/web/openapi.json` (served at `GET /v1/openapi.json`) by",
           "`tools/apidoc.py`; edit the document, then run the script.", "",
           info.get("description", ""), "", "## Authentication", ""]
    for name, scheme in doc["components"]["securitySchemes"].items():
        out.append(f"- `{name}`: {scheme.get('description', '')}")
    tags = [t["name"] for t in doc.get("tags", [])]
    for tag in tags:
        description = next(t.get("description", "") for t in doc["tags"] if t["name"] == tag)
        out += ["", f"## {tag.capitalize()}", "", description]
        for path, item in doc["paths"].items():
            for method in METHODS:
                op = item.get(method)
                if op is None or tag not in op.get("tags", ()):
                    continue
                out += ["", f"### `{method.upper()} {path}`", "", op["summary"] + "."]
                if op.get("description"):
                    out += ["", op["description"]]
                security = op.get("security", doc.get("security", []))
                schemes = [name for req in security for name in req]
                out += ["", "Auth: " + (", or ".join(f"`{s}`" for s in schemes) or "none") + "."]
                params = [_resolve(doc, p)
                          for p in item.get("parameters", []) + op.get("parameters", [])]
                if params:
                    out += ["", "| parameter | in | type | |", "|---|---|---|---|"]
                    for p in params:
                        name = f"`{p['name']}`" + ("" if p.get("required") else " (optional)")
                        out.append(f"| {name} | {p['in']} | {_type(p['schema'])} | "
                                   f"{p.get('description', '')} |")
                body = op.get("requestBody")
                if body:
                    schema = body["content"]["application/json"]["schema"]
                    out += ["", f"Body: {_type(schema)}."]
                out += ["", "| status | answer | |", "|---|---|---|"]
                for status, response in op["responses"].items():
                    response = _resolve(doc, response)
                    content = response.get("content", {})
                    kind = ", ".join(
                        _type(c["schema"]) if mime.startswith("application/json") else f"`{mime}`"
                        for mime, c in content.items()) or "empty"
                    headers = ", ".join(f"`{h}`" for h in response.get("headers", {}))
                    note = response.get("description", "")
                    if headers:
                        note += f" Headers: {headers}."
                    out.append(f"| {status} | {kind} | {note.strip()} |")
    out += ["", "## Schemas"]
    for name, schema in doc["components"]["schemas"].items():
        out += ["", f"### {name}", ""]
        fields = _fields(doc, schema)
        if schema.get("description"):
            out += [schema["description"], ""]
        if fields:
            out += ["| field | type | |", "|---|---|---|"] + fields
        else:
            out.append(_type(schema) + ".")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def main(argv: list[str]) -> int:
    with open(SPEC, encoding="utf-8") as f:
        text = render(json.load(f))
    if "--check" in argv:
        with open(DOC, encoding="utf-8") as f:
            if f.read() != text:
                print("docs/api.md is out of date: run python tools/apidoc.py", file=sys.stderr)
                return 1
        return 0
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
