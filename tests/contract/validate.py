#!/usr/bin/env python3
"""Validate JSON bodies against schema components of Kapso's published OpenAPI 3.1 files.

Usage: validate.py SPEC_DIR < cases.json

cases.json is {"cases": [{"name": str, "spec": "openapi-workflows.yaml",
"schema": "WorkflowExecutionListResponse", "body": <json>}, ...]}.
Prints {"results": [{"name": str, "errors": [str, ...]}, ...]} on stdout and exits 0;
exits 77 (with the reason on stderr) when pyyaml, jsonschema or referencing is missing.

OpenAPI 3.1 schemas are JSON Schema 2020-12. Two adjustments, both applied to a copy:
- `nullable: true` (an OpenAPI 3.0 keyword that 3.1 ignores) still appears in
  openapi-platform.yaml's `Paging`, whose own example has `next: null`; it is read as
  "type or null", which is what the spec's authors meant.
- Strict mode: every `$ref` that is not an `allOf` member, and every inline object schema with
  `properties` but no `additionalProperties`, gets `unevaluatedProperties: false`, so a body
  carrying a field the spec does not name (a typo, an invented field) fails. Schemas that
  allow extra keys (`additionalProperties: true`) stay open.
Formats `uuid` and `date-time` are checked (date-time by this script, so the result does not
depend on whether jsonschema's optional rfc3339-validator is installed).
"""

import json
import os
import re
import sys
from datetime import datetime

try:
    import yaml
    from jsonschema import Draft202012Validator, FormatChecker
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
except ImportError as e:  # the Rust test turns this into SKIPPED or, under CI, a failure
    print(f"missing Python module: {e.name} (pip install pyyaml jsonschema)", file=sys.stderr)
    sys.exit(77)


def adjust(node, closable=True):
    """Return a copy of a schema tree with nullable rewritten and strictness added.

    `closable` is false for `allOf` members and component roots: they are closed where they
    are used (at the `$ref` or the `allOf` parent), so the annotations of every member count.
    """
    if isinstance(node, list):
        return [adjust(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "allOf" and isinstance(value, list):
            out[key] = [adjust(x, closable=False) for x in value]
        elif key in ("properties", "$defs", "patternProperties") and isinstance(value, dict):
            # Maps of name -> schema: the names are not keywords.
            out[key] = {name: adjust(sub) for name, sub in value.items()}
        elif key in ("example", "examples", "default", "enum", "const"):
            out[key] = value
        else:
            out[key] = adjust(value)
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    is_object_schema = "$ref" in out or "properties" in out or "allOf" in out
    if closable and is_object_schema and "additionalProperties" not in out:
        out["unevaluatedProperties"] = False
    return out


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def format_checker():
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def is_datetime(value):
        if not isinstance(value, str):
            return True
        if not RFC3339.fullmatch(value):
            return False
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    return checker


def load_registry(spec_dir, names):
    resources = []
    for name in names:
        with open(os.path.join(spec_dir, name), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        schemas = {n: adjust(s, closable=False) for n, s in doc["components"]["schemas"].items()}
        doc = {"components": {"schemas": schemas}}
        resources.append((f"urn:kapso:{name}", Resource(contents=doc, specification=DRAFT202012)))
    return Registry().with_resources(resources)


def main():
    spec_dir = sys.argv[1]
    cases = json.load(sys.stdin)["cases"]
    registry = load_registry(spec_dir, sorted({c["spec"] for c in cases}))
    checker = format_checker()
    results = []
    for case in cases:
        schema = {
            "$ref": f"urn:kapso:{case['spec']}#/components/schemas/{case['schema']}",
            "unevaluatedProperties": False,
        }
        validator = Draft202012Validator(schema, registry=registry, format_checker=checker)
        errors = [
            f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
            for err in validator.iter_errors(case["body"])
        ]
        results.append({"name": case["name"], "errors": errors[:20]})
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
