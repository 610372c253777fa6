"""Above raven/kube/ the code works on typed objects: no `Any`, no raw API JSON (the lint step, as a test).

mypy's `--disallow-any-expr` misses an `Any` hidden behind a type alias imported from another module
(raven.kube.client.JSON is `dict[str, Any]`), so the second test checks that no such name is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABOVE_KUBE = ("raven/agent", "raven/controller", "raven/api", "raven/nattraversal")
# What raven/kube/ hands out as raw JSON (or carrying it); the typed layer is raven.kube.typed.
RAW = {"JSON", "InformerEvent", "name_of", "rv_of", "key_of"}


def test_no_any_expression_above_kube() -> None:
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run([
        "--strict", "--disallow-any-expr", "--follow-imports=silent", "--config-file", str(ROOT / "pyproject.toml"),
        *(str(ROOT / p) for p in ABOVE_KUBE),
    ])
    assert status == 0, out + err


def test_no_raw_json_imported_from_kube() -> None:
    found = []
    for pkg in ABOVE_KUBE:
        for path in sorted((ROOT / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raven.kube"):
                    found += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name in RAW]
    assert found == []
