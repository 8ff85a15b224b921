"""Regenerate results/<dataset>/README.md and its plot from the JSON files already there.

    python benchmarks/render.py [--dataset citeulike]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coldllm.results import render_table, write_results

ROOT = Path(__file__).resolve().parent.parent


def render(dataset: str = "citeulike") -> str:
    for path in (ROOT / "results" / dataset).glob("*.json"):  # each file's stamp, from its rows
        write_results(path, json.loads(path.read_text()))
    reference = json.loads((ROOT / "benchmarks" / "reference.json").read_text())
    notes_path = ROOT / "benchmarks" / f"notes-{dataset}.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    return render_table(ROOT / "results" / dataset, reference, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="citeulike")
    print(render(parser.parse_args().dataset))
