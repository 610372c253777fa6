"""`make bench`'s last step: one flat table of every figure the benchmarks wrote to bench-results/*.json.

Each benchmark prints its own table and writes its own JSON; this collects the numeric leaves
(`area  metric  value`) so one screen shows the whole run, and writes bench-results/summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path("bench-results")


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, float | int | str]]:
    if isinstance(obj, dict):
        out: list[tuple[str, float | int | str]] = []
        for k, v in obj.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):
        return [] if len(obj) > 12 else [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{prefix}[{i}]")]
    if isinstance(obj, bool):
        return [(prefix, str(obj))]
    if isinstance(obj, int | float):
        return [(prefix, obj)]
    return []


def _fmt(v: float | int | str) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main() -> None:
    summary: dict[str, dict[str, float | int | str]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "summary.json":
            continue
        summary[path.stem] = dict(_leaves(json.loads(path.read_text())))
    width = max((len(k) for rows in summary.values() for k in rows), default=10)
    print(f"\n{'area':<10} {'metric':<{width}} value")
    for area, rows in summary.items():
        for metric, value in rows.items():
            print(f"{area:<10} {metric:<{width}} {_fmt(value)}")
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(f"\nwrote {RESULTS / 'summary.json'} ({sum(len(r) for r in summary.values())} figures)")


if __name__ == "__main__":
    main()
