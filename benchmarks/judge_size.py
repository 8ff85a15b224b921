"""The judge's size curve: for each judge model tried by ``judge_trial.py`` under the same settings
(the same items, candidates, training users and template; only ``refiner.model`` differs), its
parameters against its AUC and accepted precision on cold-validation candidates and its seconds per
1,000 pairs.

    python benchmarks/judge_trial.py --preset configs/ml-1m.yaml <settings>
    python benchmarks/judge_trial.py --preset configs/ml-1m.yaml <settings> --refiner.model=gemma3-270m
    python benchmarks/judge_size.py --dataset ml-1m

Reads ``results/<dataset>/judge-trials.json`` and writes ``judge-size.json`` (one row per trial,
each with the trial's own config, commit and date) and ``judge-size.png`` beside it. The free
judges' AUC on the same pairs (cosine, the filter's score) are drawn as flat lines: what a
language model must beat to earn its calls.
"""

from __future__ import annotations

import argparse
import json

from results import results_dir, write_results

MODEL_FLAG = "--refiner.model="


def settings_key(row: dict) -> tuple:
    """What a trial was run under, less the judge model: trials with equal keys form one curve."""
    return (row["backbone"], row["items"], tuple(sorted(o for o in row["overrides"] if not o.startswith(MODEL_FLAG))))


def size_rows(trials: list[dict]) -> list[dict]:
    """The trials that share their settings with a trial of another model, smallest model first."""
    groups: dict[tuple, list[dict]] = {}
    for row in trials:
        if "parameters" in row:
            groups.setdefault(settings_key(row), []).append(row)
    out = []
    for rows in groups.values():
        if len({r["model"] for r in rows}) < 2:
            continue
        for r in sorted(rows, key=lambda r: r["parameters"]):
            accepted = r["precision_at_llm_accept_rate"]
            out.append({
                "model": r["model"], "parameters": r["parameters"], "backbone": r["backbone"], "items": r["items"],
                "pairs": r["pairs"], "real": r["real"], "auc": r["auc"]["llm"], "auc_cosine": r["auc"]["cosine"],
                "auc_filter_score": r["auc"]["filter_score"], "accept_rate": r["accept_rate_llm"],
                "accepted_precision": accepted["llm"], "cosine_precision_at_same_rate": accepted["cosine"],
                "precision_all": r["precision_all"],
                "held_out_auc": {part: v["auc"] for part, v in r["held_out"]["after"].items()},
                "seconds_per_1000_pairs": r["seconds_per_1000_pairs"], "threads": r.get("threads"),
                "tune_seconds": r["tune_seconds"], "settings": [*settings_key(r)[2]],
                "config": r["config"], "commit": r["commit"], "created": r["created"],
            })
    return out


def plot(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    params = [r["parameters"] / 1e6 for r in rows]
    for ax, key, free, label, free_label in (
            (axes[0], "auc", "auc_cosine", "AUC of P(Yes)", "cosine judge, same pairs"),
            (axes[1], "accepted_precision", "cosine_precision_at_same_rate", "precision of accepted pairs",
             "cosine judge at the LoRA judge's acceptance rate")):
        ax.plot(params, [r[key] for r in rows], "o-", label="LoRA judge")
        ax.plot(params, [r[free] for r in rows], "s--", color="grey", label=free_label)
        for x, r in zip(params, rows):
            ax.annotate(r["model"], (x, r[key]), textcoords="offset points", xytext=(4, 6), fontsize=8)
        if key == "auc":
            ax.axhline(0.5, color="lightgrey", lw=1)
        else:
            ax.plot(params, [r["precision_all"] for r in rows], ":", color="black", label="every candidate")
        ax.set_xlabel("judge parameters (millions)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="citeulike")
    args = parser.parse_args()
    folder = results_dir(args.dataset)
    trials = json.loads((folder / "judge-trials.json").read_text())["rows"]
    rows = size_rows(trials)
    if not rows:
        raise SystemExit(f"{folder / 'judge-trials.json'}: no two models tried under the same settings")
    write_results(folder / "judge-size.json", {"rows": rows})
    plot(rows, folder / "judge-size.png", f"{args.dataset}: the judge's size curve on cold-validation candidates")
    for r in rows:
        print(f"{r['model']:<14} {r['parameters'] / 1e6:6.0f}M  AUC {r['auc']:.3f} (cosine {r['auc_cosine']:.3f})  "
              f"accepted precision {r['accepted_precision']:.3f} at accept rate {r['accept_rate']:.3f}  "
              f"{r['seconds_per_1000_pairs']:.0f} s / 1,000 pairs")


if __name__ == "__main__":
    main()
