"""Every recorded result row, evaluated again from its run folder under the current code.

    python benchmarks/reproduce.py [--datasets ml-1m citeulike] [--runs runs]

For each ``results/<dataset>/<backbone>.json`` row and each of its seeds, the run folder that made
it (``bench-<dataset>-<backbone>[-s<seed>][-<variant>]``) is opened through the same reader the
service uses, its saved embeddings (the update's, or the backbone's for the backbone row) are
scored on the test split, and the figures are compared with the recorded ones. The training-free
controls (content-KNN, random) are fitted again on their backbone run with their recorded settings.
A row whose folder is gone (the trained content-mapping baselines keep no embeddings; older runs
were cleaned away) is listed as such, never counted as reproduced. Writes ``results/reproduce.json`` (each checked row with its
largest difference, commit and date) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from coldllm.backbones import load_backbone
from coldllm.baselines.runner import fit_and_evaluate, make_context
from coldllm.content import encode_texts
from coldllm.evaluate import Evaluator, embedding_scorer
from coldllm.layout import RunLayout
from coldllm.serve.runs import read_manifest, run_config, run_data
from coldllm.utils import git_commit, now_iso
from names import run_name
from results import results_dir, write_results

ROOT = Path(__file__).resolve().parent.parent
TRAINING_FREE = ("knn", "random")  # fitted again: nothing learned, nothing kept
TOLERANCE = 1e-6


def flat(metrics: dict) -> dict[str, float]:
    return {f"{setting}/{name}": float(value) for setting, values in metrics.items()
            if setting in ("overall", "cold", "warm") for name, value in values.items()}


def evaluate_folder(folder: Path, backbone_row: bool) -> dict:
    manifest = read_manifest(folder)
    cfg = run_config(folder, manifest)
    data = run_data(folder, manifest, cfg)
    layout = RunLayout(folder)
    if backbone_row:
        user, item = load_backbone(layout.backbone, data).embeddings()
    else:
        tensors = load_file(str(layout.embeddings))
        user, item = tensors["user"], tensors["item"]
    with torch.no_grad():
        return Evaluator(data, "test", cfg.eval.ks, cfg.eval.batch_size).evaluate(embedding_scorer(user, item))


def refit_control(folder: Path, method: str, params: dict | None) -> dict:
    """A training-free control fitted again on the backbone run in ``folder``: its test figures."""
    manifest = read_manifest(folder)
    cfg = run_config(folder, manifest)
    data = run_data(folder, manifest, cfg)
    backbone = load_backbone(RunLayout(folder).backbone, data)
    ctx = make_context(data, backbone, encode_texts(list(data.item_text), cfg.content), torch.device("cpu"),
                       cfg.seed, cfg.eval.ks, cfg.eval.metric)
    return fit_and_evaluate(method, params, ctx, splits=("test",), ks=cfg.eval.ks)[1]["test"]


def check(dataset: str, backbone: str, method: str, seed: int, recorded: dict, runs: Path) -> dict:
    base = run_name(dataset, backbone, seed)
    control = method in TRAINING_FREE
    folder = runs / (base if method == "backbone" or control else f"{base}-{method}")
    row = {"dataset": dataset, "backbone": backbone, "method": method, "seed": seed, "folder": folder.name}
    has_result = (RunLayout(folder).backbone_best.exists() if method == "backbone" or control
                  else RunLayout(folder).embeddings.exists())
    if not has_result:
        return {**row, "status": "no run folder with embeddings"}
    if control:
        again = flat(refit_control(folder, method, (recorded.get("config") or {}).get("method_params")))
    else:
        again = flat(evaluate_folder(folder, method == "backbone"))
    before = flat(recorded)
    diff = max(abs(again[k] - before[k]) for k in before if k in again)
    return {**row, "status": "reproduced" if diff <= TOLERANCE else "differs", "max_abs_diff": diff,
            "recorded_commit": recorded.get("commit")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml-1m", "citeulike"])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for path in sorted(results_dir(dataset).glob("*.json")):
            doc = json.loads(path.read_text())
            if "methods" not in doc or "backbone" not in doc:
                continue
            for method, entry in doc["methods"].items():
                for seed, figures in (entry.get("per_seed") or {str(entry.get("seed", 2023)): entry}).items():
                    rows.append(check(dataset, doc["backbone"], method, int(seed), figures, args.runs))
                    print(f"{rows[-1]['folder']:55s} {rows[-1]['status']:32s} {rows[-1].get('max_abs_diff', '')}",
                          flush=True)
    stamp = {"commit": git_commit(ROOT), "created": now_iso(), "tolerance": TOLERANCE}
    # each row with the commit and date of this check; the file stamped with them too (write_results)
    write_results(ROOT / "results" / "reproduce.json", {"rows": [{**r, **stamp} for r in rows]})
    counts = {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}}
    print(counts)


if __name__ == "__main__":
    main()
