"""The judge's size curve: for each judge model tried by ``judge_trial.py`` under the same settings
(the same items, candidates, training users and template; only ``refiner.model`` differs), its
parameters against its AUC (over all pairs, and within items: which of one item's candidates take
it, the question the simulation asks) and accepted precision on cold-validation candidates, and its
seconds per 1,000 pairs. Trials under other settings make curves of their own.

    python benchmarks/judge_trial.py --preset configs/ml-1m.yaml <settings>
    python benchmarks/judge_trial.py --preset configs/ml-1m.yaml <settings> --refiner.model=gemma3-270m
    python benchmarks/judge_size.py --dataset ml-1m

Reads ``results/<dataset>/judge-trials.json`` and writes ``judge-size.json`` (one row per trial,
each with the trial's own config, commit and date) and ``judge-size.png`` beside it. The free
judges on the same pairs are drawn dashed beside each curve (the cosine judge; within items, the
candidates' activity, the strongest free signal there): what a language model must beat to earn its
calls.
"""

from __future__ import annotations

import argparse
import json

from results import results_dir, write_results

MODEL_FLAG = "--refiner.model="


def settings_key(row: dict) -> tuple:
    """What a trial was run under, less the judge model: trials with equal keys form one curve."""
    return (row["backbone"], row["items"], tuple(sorted(o for o in row["overrides"] if not o.startswith(MODEL_FLAG))))


def curve_label(key: tuple) -> str:
    backbone, items, settings = key
    short = [o.removeprefix("--refiner.") for o in settings]
    return f"{backbone}, {items} items" + (f", {' '.join(short)}" if short else "")


def size_rows(trials: list[dict]) -> list[dict]:
    """The trials that share their settings with a trial of another model, one curve per shared
    setting, each curve's smallest model first."""
    groups: dict[tuple, list[dict]] = {}
    for row in trials:
        if "parameters" in row:
            groups.setdefault(settings_key(row), []).append(row)
    out = []
    for key, rows in groups.items():
        if len({r["model"] for r in rows}) < 2:
            continue
        for r in sorted(rows, key=lambda r: r["parameters"]):
            accepted = r["precision_at_llm_accept_rate"]
            # within items: the simulation's own question (which of one item's candidates take it);
            # trials from before it was measured have none
            within = r.get("auc_within_item", {})
            out.append({
                "model": r["model"], "parameters": r["parameters"], "curve": curve_label(key),
                "backbone": r["backbone"], "items": r["items"],
                "pairs": r["pairs"], "real": r["real"], "auc": r["auc"]["llm"], "auc_cosine": r["auc"]["cosine"],
                "auc_filter_score": r["auc"]["filter_score"],
                "auc_within_item": within.get("llm"), "auc_within_item_cosine": within.get("cosine"),
                "auc_within_item_activity": within.get("activity"), "accept_rate": r["accept_rate_llm"],
                "accepted_precision": accepted["llm"], "cosine_precision_at_same_rate": accepted["cosine"],
                "precision_all": r["precision_all"],
                "held_out_auc": {part: v["auc"] for part, v in r["held_out"]["after"].items()},
                "seconds_per_1000_pairs": r["seconds_per_1000_pairs"], "threads": r.get("threads"),
                "tune_seconds": r["tune_seconds"], "settings": [*key[2]],
                "config": r["config"], "commit": r["commit"], "created": r["created"],
            })
    return out


# LLaMA-7B's parameter count as its paper states it (Touvron et al., 2023: 6.7B)
PAPER_JUDGE = ("llama-7b (the paper's verdicts)", 6.7e9)


def reference_rows(folder, backbone: str = "mf") -> list[dict]:
    """The paper's own 7B verdicts on its own filter candidates of the cold validation items
    (the ``paper-refiner`` row's candidate measures, where that row was recorded): a reference
    point on other pairs than the trials', never a trial. Its seconds were not measured here."""
    path = folder / f"{backbone}.json"
    row = json.loads(path.read_text())["methods"].get("paper-refiner") if path.exists() else None
    judged = (row or {}).get("funnel", {}).get("candidate_judges", {}).get("val")
    if not judged:
        return []
    model, parameters = PAPER_JUDGE
    within = judged.get("within_item", {})  # keyed as judge_stats.judges_on_candidates writes it
    return [{
        "model": model, "parameters": parameters, "curve": "reference: the paper's candidates and 7B verdicts",
        "backbone": backbone, "items": None, "pairs": judged["pairs"], "real": judged["real"],
        "auc": judged["auc_judge"], "auc_cosine": judged["auc_cosine"], "auc_filter_score": None,
        "auc_within_item": within.get("auc_judge"), "auc_within_item_cosine": within.get("auc_cosine"),
        "auc_within_item_activity": within.get("auc_activity"), "accept_rate": judged["accept_rate"],
        "accepted_precision": judged["precision_accepted"], "cosine_precision_at_same_rate": None,
        "precision_all": judged["precision_all"], "held_out_auc": None, "seconds_per_1000_pairs": None,
        "threads": None, "tune_seconds": None, "settings": [], "source": f"{path.name}: paper-refiner",
        "config": row.get("config"), "commit": row.get("commit"), "created": row.get("created"),
    }]


PANELS = (  # (row key, free judge's key, y label, what the free line is)
    ("auc", "auc_cosine", "AUC of P(Yes), all pairs", "cosine judge"),
    ("auc_within_item", "auc_within_item_activity", "AUC within items (the simulation's question)",
     "activity judge"),
    ("accepted_precision", "cosine_precision_at_same_rate", "precision of accepted pairs",
     "cosine judge at the same acceptance rate"),
)


LOG_TICKS = (100, 300, 1000, 3000, 10000)  # millions of parameters


def plot(rows: list[dict], path, title: str) -> None:
    """One panel per measure, one colour per curve (trials under the same settings): the LoRA
    judges joined by a solid line, the free judge on the same pairs dashed in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.lines import Line2D

    curves: dict[str, list[dict]] = {}
    for r in rows:
        curves.setdefault(r["curve"], []).append(r)
    widest = max(r["parameters"] for r in rows) / 1e6
    log_axis = widest > 10 * min(r["parameters"] for r in rows) / 1e6  # the 7B reference beside ~100M trials
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.6))
    for ax, (key, free, label, free_label) in zip(axes, PANELS):
        for colour, curve in enumerate(curves.values()):
            shown = [r for r in curve if r.get(key) is not None]
            if not shown:
                continue
            params = [r["parameters"] / 1e6 for r in shown]
            ax.plot(params, [r[key] for r in shown], "o-", color=f"C{colour}")
            if all(r.get(free) is not None for r in shown):
                ax.plot(params, [r[free] for r in shown], "s--", color=f"C{colour}", alpha=0.6)
            for x, r in zip(params, shown):
                right = x == widest  # the rightmost labels go left of their point, inside the axes
                ax.annotate(r["model"], (x, r[key]), textcoords="offset points", xytext=(-4 if right else 4, 6),
                            ha="right" if right else "left", fontsize=7)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured in these trials", ha="center", va="center", transform=ax.transAxes)
        elif key == "accepted_precision":
            for colour, curve in enumerate(curves.values()):
                ax.axhline(curve[0]["precision_all"], ls=":", color=f"C{colour}", lw=1)
        else:
            ax.axhline(0.5, color="lightgrey", lw=1)  # chance
        if ax.lines and log_axis:
            ax.set_xscale("log")
            ax.set_xticks(LOG_TICKS, [f"{t:,}" for t in LOG_TICKS])
            ax.minorticks_off()
        ax.set_xlabel("judge parameters (millions)")
        ax.set_title(f"{label}\n(dashed: {free_label}, same pairs)", fontsize=9)
    handles = [Line2D([], [], color=f"C{c}", marker="o", label=name if name.startswith("reference") else
                      f"LoRA judge: {name}") for c, name in enumerate(curves)]
    handles.append(Line2D([], [], color="grey", ls=":", label="precision of every candidate"))
    fig.legend(handles=handles, loc="lower center", ncol=1, fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * len(handles), 1, 1))
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
    rows += reference_rows(folder)
    write_results(folder / "judge-size.json", {"rows": rows})
    plot(rows, folder / "judge-size.png", f"{args.dataset}: the judge's size curve on cold-validation candidates")
    for r in rows:
        within = "-" if r["auc_within_item"] is None else f"{r['auc_within_item']:.3f}"
        speed = "-" if r["seconds_per_1000_pairs"] is None else f"{r['seconds_per_1000_pairs']:.0f}"
        print(f"{r['curve']}: {r['model']:<14} {r['parameters'] / 1e6:6.0f}M  AUC {r['auc']:.3f} "
              f"(cosine {r['auc_cosine']:.3f}), within items {within}  "
              f"accepted precision {r['accepted_precision']:.3f} at accept rate {r['accept_rate']:.3f}  "
              f"{speed} s / 1,000 pairs")


if __name__ == "__main__":
    main()
