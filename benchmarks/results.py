"""Benchmark results: one JSON per (dataset, backbone), merged method by method, and the
markdown table and plot generated from them. Nothing here is typed by hand: every figure comes
from a JSON file that a benchmark command wrote, stamped with its commit, config and date.
"""

from __future__ import annotations

import fcntl
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any


RESULTS = Path(__file__).resolve().parent.parent / "results"
# A dataset's measurements are filed under a name of their own, never the raw data's folder name
# (MovieLens-1M's files stay in the package or cache/raw/ml-1m): a folder named like the data reads
# as a copy of it.
FOLDERS = {"ml-1m": "movielens-1m"}


def results_dir(dataset: str) -> Path:
    """Where the measurements of ``dataset`` (its ``data.name``) are written and read."""
    return RESULTS / FOLDERS.get(dataset, dataset)

from coldllm.config import BackboneConfig
from coldllm.evaluate import SETTINGS
from coldllm.utils import atomic_path, git_commit, now_iso, write_json

HEADLINE = ("recall@20", "ndcg@20")


def record_method(path: Path, *, dataset: str, split: str, backbone: str, method: str,
                  metrics: dict[str, dict[str, float]], config: dict[str, Any],
                  extra: dict[str, Any] | None = None, commit: str | None = None) -> dict[str, Any]:
    """Add (or replace) one method's test metrics in ``path``, keeping the other methods.

    Every row carries its own provenance: the resolved ``config`` it ran with, the ``commit`` the
    measured run started from (default: the current one) and the date it was written. The file
    itself only names the dataset, split and backbone, so no row's provenance is another's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # benchmarks of several backbones or methods may run side by side: one writer at a time, each
    # reading the file afresh, so no row is lost between another's read and write
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _record_locked(path, dataset, split, backbone, method, metrics, config, extra, commit)


def _record_locked(path, dataset, split, backbone, method, metrics, config, extra, commit) -> dict[str, Any]:
    doc = json.loads(path.read_text()) if path.exists() else {"methods": {}}
    doc.pop("config", None)  # file-level config of an older format: each row has its own
    commit, created = commit or git_commit(), now_iso()
    doc.update(dataset=dataset, split=split, backbone=backbone)
    entry = {setting: {m: metrics[setting][m] for m in metrics[setting]} for setting in SETTINGS}
    entry.update(extra or {})
    entry.update(config=config, commit=commit, created=created)
    doc["methods"][method] = entry
    write_results(path, doc)
    return doc


# what a seed's run may differ in from another seed's of the same row: the seed and the run's names
SEED_FREE = ("seed", "name", "reuse")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in SEED_FREE}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    # the sample standard deviation (n - 1): three seeds are a sample of the seeds one could draw
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var ** 0.5


def aggregate(per_seed: dict[str, dict[str, Any]], key: str | None = None) -> dict[str, dict[str, float]]:
    """Mean and ``<metric>_std`` per setting over the seeds' figures (``key``: a nested block, e.g. val)."""
    blocks = [r[key] if key else r for r in per_seed.values()]
    blocks = [b for b in blocks if b]
    out: dict[str, dict[str, float]] = {}
    for setting in SETTINGS:
        names = sorted({m for b in blocks for m in b.get(setting, {})})
        for metric in names:
            values = [b[setting][metric] for b in blocks if metric in b.get(setting, {})]
            if len(values) != len(blocks):
                continue
            mean, std = _mean_std(values)
            out.setdefault(setting, {}).update({metric: mean, f"{metric}_std": std})
    return out


def record_seed(path: Path, *, dataset: str, split: str, backbone: str, method: str, seed: int,
                metrics: dict[str, dict[str, float]], config: dict[str, Any],
                extra: dict[str, Any] | None = None, commit: str | None = None) -> dict[str, Any]:
    """Add one seed's test figures to a method's multi-seed row.

    The seed's figures (test, and ``val`` when ``extra`` has it), commit and date are kept under the
    row's ``per_seed``; the row's settings hold their mean and, beside each metric, ``<metric>_std``
    (across seeds), ``seeds`` lists them. Seeds recorded under another configuration (anything but the
    seed and run names differs) are dropped, never averaged with the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.exists() else {"methods": {}}
        doc.update(dataset=dataset, split=split, backbone=backbone)
        old = doc["methods"].get(method, {})
        per_seed = {k: v for k, v in old.get("per_seed", {}).items()
                    if _comparable(v.get("config", {})) == _comparable(config)}
        extra = dict(extra or {})
        per_seed[str(seed)] = {**{s: metrics[s] for s in SETTINGS}, "val": extra.get("val"), "config": config,
                               "commit": commit or git_commit(), "created": now_iso(),
                               **{k: extra[k] for k in ("seconds", "llm_calls") if k in extra}}
        seeds = sorted(per_seed, key=int)
        per_seed = {k: per_seed[k] for k in seeds}
        entry = {**aggregate(per_seed), **extra, "val": aggregate(per_seed, "val") or extra.get("val"),
                 "seeds": [int(k) for k in seeds], "per_seed": per_seed}
        newest = per_seed[str(seed)]  # the seed written now is the newest
        entry.update(config=config, commit=newest["commit"], created=newest["created"])
        doc["methods"][method] = entry
        write_results(path, doc)
        return doc


# the project's own ways of simulating a new item's users: the default configuration is one of these
OWN_METHODS = ("onepass", "onepass-minilm-tuned", "onepass-llm-frozen", "onepass-llm", "onepass-llm-std",
               "onepass-llm-last", "onepass-llm-top4", "coldllm", "coldllm-cosine",
               "coldllm-activity", "coldllm-no-refiner", "coldllm-collab", "coldllm-lm", "coldllm-retrain")
# settings grids of the own methods (funnel.py's PENALTY_GRID, KEEP_GRID)
FREE_JUDGE_GRIDS = ("coldllm-cosine-keep-", "coldllm-activity-keep-")
OWN_PREFIXES = ("onepass-penalty-", *FREE_JUDGE_GRIDS)
DEFAULT_METRIC = ("cold", "ndcg@20")


def _seed_vals(entry: dict[str, Any], setting: str, metric: str) -> dict[int, float]:
    """A row's validation figure per seed (a row recorded before seeds were kept: its one seed)."""
    per_seed = entry.get("per_seed") or {}
    vals = {int(s): _get(v, "val", setting, metric) for s, v in per_seed.items()}
    if not per_seed and _get(entry, "val", setting, metric) is not None:
        vals = {int((entry.get("seeds") or [entry.get("config", {}).get("seed", 0)])[0]): entry["val"][setting][metric]}
    return {s: v for s, v in vals.items() if v is not None}


def backbone_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """The backbone settings a row was measured on, every field filled with its default (a row recorded
    before a field existed ran with the default), without where it ran."""
    given = (entry.get("config") or {}).get("backbone") or {}
    settings = {**asdict(BackboneConfig()), **given}
    settings.pop("device", None)
    return settings


def on_files_backbone(doc: dict[str, Any], method: str) -> bool:
    """Whether ``method``'s row was measured on the backbone of the file's ``backbone`` row: rows on
    another backbone setting (kept from before the preset changed) compare nothing with it."""
    reference = doc.get("methods", {}).get("backbone")
    if reference is None or "config" not in reference:
        return True
    return backbone_settings(doc["methods"][method]) == backbone_settings(reference)


def choose_default(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The project's own method with the best cold-validation NDCG@20: the configuration a user gets
    by default. Compared on the seeds every candidate has (the mean over three seeds against one
    seed's figure would favour whichever row has fewer seeds, by its noise alone); each row's own
    mean where they share none; only rows on the file's backbone. Test figures never enter the choice."""
    setting, metric = DEFAULT_METRIC
    methods = doc.get("methods", {})
    # OWN_METHODS' order first: a tie goes to the earlier (the simpler) method
    own = [m for m in OWN_METHODS if m in methods] + sorted(m for m in methods if m.startswith(OWN_PREFIXES))
    vals = {m: _seed_vals(doc["methods"][m], setting, metric) for m in own if on_files_backbone(doc, m)}
    vals = {m: v for m, v in vals.items() if v}
    if not vals:
        return None
    common = set.intersection(*(set(v) for v in vals.values()))
    scored = {m: sum(v[s] for s in (common or v)) / len(common or v) for m, v in vals.items()}
    best = max(scored, key=scored.get)
    on = f"seeds {sorted(common)}, shared by every candidate" if common else "mean over each row's seeds"
    return {"method": best, "chosen_on": f"validation {setting} {metric}, {on}",
            "val": scored, "test": {s: doc["methods"][best][s] for s in SETTINGS}}


def _mean_seed_seconds(row: dict[str, Any]) -> None:
    """A multi-seed row's ``seconds`` is the mean of its seeds' (with ``seconds_std``), like its metrics.

    Timings on a shared 2-core machine vary by a factor of two between seeds; the newest seed's
    alone would make a method look faster or slower by chance.
    """
    times = [v["seconds"] for v in (row.get("per_seed") or {}).values() if v.get("seconds") is not None]
    if times and len(times) == len(row["per_seed"]):
        mean, std = _mean_std(times)
        row.update(seconds=round(mean, 2), seconds_std=round(std, 2))


def write_results(path: Path, doc: dict[str, Any]) -> None:
    """Write a results file stamped with the ``commit`` and ``created`` of its newest row.

    Rows (``methods`` values or ``rows`` items) each carry their own provenance; the file's stamp
    is derived from them, never typed, so it always names the commit of the latest result in it.
    """
    rows = list(doc.get("methods", {}).values()) + list(doc.get("rows", []))
    for row in rows:
        _mean_seed_seconds(row)
    dated = [r for r in rows if "created" in r and "commit" in r]
    if dated:
        newest = max(reversed(dated), key=lambda r: r["created"])  # ties: the later row
        doc.update(commit=newest["commit"], created=newest["created"])
    if "methods" in doc:
        default = choose_default(doc)
        if default is not None:
            doc["default"] = default
    write_json(path, doc)


# Table order: the backbone alone, the controls, the published methods (by year), then ours.
ORDER = ["backbone", "random", "knn", "deepmusic", "dropoutnet", "metaemb", "mtpr", "clcrec", "gar", "aldi",
         "coldllm", "coldllm-cosine", "coldllm-activity", "coldllm-no-refiner", "coldllm-collab", "coldllm-lm", "coldllm-random",
         "coldllm-retrain", "paper-filter", "paper-refiner"]
ORACLE = "coldllm-oracle-"  # diagnostic rows (they read held-out labels): their own table and plot


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _seconds(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_spread(block: dict[str, Any], metric: str) -> str:
    """A figure, with ``± std`` when it is a mean over several seeds."""
    std = block.get(f"{metric}_std")
    return _fmt(block.get(metric)) + (f" ± {std:.4f}" if std else "")


def _methods(doc: dict[str, Any], oracle: bool = False) -> list[str]:
    """The rows of ``doc`` in table order: the methods, or (``oracle``) the oracle diagnostics."""
    if oracle:  # r descending, then f: from the perfect judge down
        def rf(name: str) -> tuple[float, float]:
            r, f = name[len(ORACLE):].split("-")
            return -float(r[1:]), float(f[1:])

        return sorted((m for m in doc["methods"] if m.startswith(ORACLE)), key=rf)
    known = [m for m in ORDER if m in doc["methods"]]
    return known + sorted(m for m in doc["methods"] if m not in ORDER and not m.startswith(ORACLE))


def load_docs(folder: Path) -> list[dict[str, Any]]:
    """The ``<backbone>.json`` files of ``folder``, by backbone (they hold methods; the search and
    trial files beside them have tables of their own)."""
    return sorted((d for d in (json.loads(p.read_text()) for p in folder.glob("*.json")) if "methods" in d),
                  key=lambda d: d["backbone"])


def render_table(folder: Path, reference: dict[str, Any] | None = None, notes: str = "") -> str:
    """Markdown summary of every ``<backbone>.json`` in ``folder`` (plus a PNG plot beside it)."""
    docs = load_docs(folder)
    ref = reference or {"methods": {}, "backbone": None}
    head = "| backbone | method | " + " | ".join(f"{s} R@20 | {s} N@20" for s in SETTINGS)
    lines = [
        f"# Results on {docs[0]['dataset'] if docs else '?'} ({docs[0]['split'] if docs else '?'} split)",
        "",
        "Test set, full ranking over every user with held-out items (overall: all items; cold: cold items "
        "only; warm: warm items only; training items masked). Generated by `benchmarks/backbones.py`, "
        "`benchmarks/baselines.py` and `benchmarks/funnel.py` from the JSON files in this folder; each row names the commit it was "
        "measured at. *paper* is the cold Recall@20 the ColdLLM paper reports with the same backbone. "
        "*reference protocol*: the same test figure under the protocol of the released ALDI/ColdLLM code (the "
        "first 2,000 users with held-out items, every other known positive masked), the one the paper's figure "
        "uses. *seconds*: fit and evaluation (for a backbone: its accumulated training), the mean over the row's "
        "seeds; *peak MB*: the measuring process's peak resident memory when the row was written. A figure with ± "
        "is the mean over the row's seeds (the model seeds; the split stays fixed) and their standard deviation; a "
        "difference smaller than the larger spread is not a finding; such a row's reference-protocol figure and "
        "peak MB are its newest seed's. *(earlier backbone)*: a row measured on other backbone settings than the backbone "
        "row's (kept from before the preset changed; compare it with nothing else in the table).",
        "",
        head + " | cold R@20, reference protocol | paper cold R@20 | seconds | peak MB | commit |",
        "|" + "---|" * (2 + 2 * len(SETTINGS) + 5),
    ]
    for doc in docs:
        for method in _methods(doc):
            entry = doc["methods"][method]
            cells = [_fmt_spread(entry.get(s, {}), m) for s in SETTINGS for m in HEADLINE]
            paper = ref["methods"].get(method, {}).get("cold", {}).get("recall@20") \
                if doc["backbone"] == ref.get("backbone") else None
            label = method if on_files_backbone(doc, method) else f"{method} (earlier backbone)"
            lines.append(f"| {doc['backbone']} | {label} | " + " | ".join(cells) +
                         f" | {_fmt(_get(entry, 'paper_protocol', 'cold', 'recall@20'))} | {_fmt(paper)}"
                         f" | {entry.get('seconds', 0):.0f} | {entry.get('peak_memory_mb', 0):.0f}"
                         f" | `{entry.get('commit', '?')[:10]}` |")
    defaults = [(d["backbone"], d["default"]) for d in docs if d.get("default")]
    if defaults:
        lines += ["", "The default configuration of each backbone (the project's own method with the best "
                  "cold-validation NDCG@20, compared on the seeds every candidate shares, among the rows on the "
                  "backbone row's settings; test figures never enter the choice): "
                  + "; ".join(f"{b}: `{d['method']}`" for b, d in defaults) + "."]
    if reference:
        lines += ["", f"Paper reference ({reference['source']}):", "", head + " |",
                  "|" + "---|" * (2 + 2 * len(SETTINGS))]
        for method, entry in reference["methods"].items():
            cells = [_fmt(entry.get(s, {}).get(m)) for s in SETTINGS for m in HEADLINE]
            lines.append(f"| {reference['backbone']} | {method} | " + " | ".join(cells) + " |")
    lines += funnel_table(docs) + prior_table(docs) + comparison_table(docs)
    lines += judge_verdict_table(docs) + one_pass_table(docs) + text_encoder_table(docs)
    lines += oracle_table(docs, folder / "oracle.png")
    lines += candidate_profile_table(folder) + update_search_table(folder) + judge_trial_table(folder)
    lines += update_curve_table(folder)
    if docs:
        _plot(docs, folder / "recall.png")
        lines += ["", "![Recall@20 per method, backbone and setting](recall.png)"]
    if notes:
        lines += ["", notes.strip()]
    text = "\n".join(lines) + "\n"
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(text)
    return text


def _get(entry: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(entry, dict) or key not in entry:
            return None
        entry = entry[key]
    return entry


def funnel_table(docs: list[dict[str, Any]]) -> list[str]:
    """The funnel's statistics of every ColdLLM variant (rows with a ``funnel`` entry)."""
    rows = [(doc["backbone"], m, doc["methods"][m]["funnel"]) for doc in docs for m in _methods(doc)
            if "funnel" in doc["methods"][m]]
    if not rows:
        return []
    lines = ["", "ColdLLM's funnel (cold **test** items unless marked val): *filtered*: share of the K "
             "filtered pairs that are real interactions, and share of the real interactions the filter "
             "keeps (coverage); *accepted*: the refiner's acceptance rate and the precision of what it "
             "accepts; *judge AUC*: held-out warm users, the filter's top-ranked non-interacted items as "
             "negatives (hard), before → after LoRA, and on the same pairs the free cosine judge and the "
             "items' popularity (their training interactions: it reads neither user nor text); "
             "*on candidates*: AUC separating real from non-real pairs among the filtered candidates of "
             "the cold validation items, by the judge's P(Yes) (for the cosine judge: the cosine), by the filter's own score and by the cosine; "
             "for the language-model judge also by the *combined* judge (P(Yes) and the cosine in a logistic "
             "regression fitted on held-out warm pairs only); *within items*: the mean over cold validation items of "
             "the AUC among each item's own candidates, the question a judge answers, by the judge, the filter's "
             "score and the candidate user's activity (training interactions).", "",
             "| backbone | variant | filtered precision | coverage | accept rate | accepted precision "
             "| judge AUC hard (before → after) | cosine / popularity AUC hard | on candidates (val): judge / filter / "
             "cosine | within items (val): judge / filter / activity |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for backbone, method, f in rows:
        before, after = _get(f, "refiner", "before", "hard", "auc"), _get(f, "refiner", "after", "hard", "auc")
        cand = _get(f, "candidate_judges", "val") or {}
        judge = f"{_fmt(before)} → {_fmt(after)}" if after is not None else "-"
        on_cand = " / ".join(_fmt(cand.get(k)) for k in ("auc_judge", "auc_filter_score", "auc_cosine")) if cand else "-"
        if "auc_combined" in cand:
            on_cand += f" (combined {_fmt(cand['auc_combined'])})"
        within = cand.get("within_item")
        within = " / ".join(_fmt(within.get(f"auc_{k}")) for k in ("judge", "filter_score", "activity")) if within else "-"
        held = [_get(f, "held_out_judges", "hard", k) for k in ("auc_cosine", "auc_popularity")]
        held = "-" if held == [None, None] else " / ".join(map(_fmt, held))
        lines.append(
            f"| {backbone} | {method} | {_fmt(_get(f, 'filter', 'test', 'precision'))} "
            f"| {_fmt(_get(f, 'filter', 'test', 'coverage'))} | {_fmt(_get(f, 'simulate', 'accept_rate'))} "
            f"| {_fmt(_get(f, 'simulate', 'refined_test', 'precision'))} | {judge} "
            f"| {held} | {on_cand} | {within} |")
    return lines


# the judges that decide which filtered pairs become interactions, the method's first
REAL_JUDGES = {"coldllm": "language model (LoRA)", "coldllm-cosine": "cosine (free)",
               "coldllm-activity": "the most active candidates (free)", "coldllm-no-refiner": "none: all accepted (free)"}
FREE_JUDGES = ("coldllm-cosine", "coldllm-activity", "coldllm-no-refiner")


def free_judges(methods: dict[str, Any]) -> list[str]:
    """The free judges' rows present, with those of other acceptance shares (``FREE_JUDGE_GRIDS``)."""
    return [m for m in methods if m in FREE_JUDGES or m.startswith(FREE_JUDGE_GRIDS)]


def _accepted_precision(entry: dict[str, Any]) -> float | None:
    return _get(entry, "funnel", "simulate", "refined_test", "precision")


def needed_precision(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """(target, precision): the best free judge's cold Recall@20, and the accepted precision at
    which oracle judges that accept every real pair (r=1; the no-refiner row is r=1, f=1) reach it,
    interpolated linearly along that curve. The precision is None when no such oracle reaches it,
    and both are None without the rows to tell."""
    methods = doc["methods"]
    free = [methods[m]["cold"]["recall@20"] for m in free_judges(methods)]
    curve = [(_accepted_precision(methods[m]), methods[m]["cold"]["recall@20"]) for m in methods
             if m.startswith(ORACLE + "r1-") or m == "coldllm-no-refiner"]
    curve = sorted((x, y) for x, y in curve if x is not None)
    if not free or len(curve) < 2:
        return None, None
    target = max(free)
    if curve[0][1] >= target:
        return target, curve[0][0]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if y0 < target <= y1:
            return target, x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return target, None


def judge_verdict_table(docs: list[dict[str, Any]]) -> list[str]:
    """The language-model judge against the free judges through the same filter and update, and
    the precision the oracle curve says a judge needs to beat the best free one."""
    rows = [(doc, m) for doc in docs for m in REAL_JUDGES if m in doc["methods"]]
    if not any(m == "coldllm" for _, m in rows):
        return []
    lines = ["", "**Does the language model earn its cost?** The judges that decide which of the same filtered "
             "pairs become interactions, through the same update. *LM calls*: language-model passes for the cold "
             "items; *accepted precision*: real interactions among the accepted pairs of the cold test items; "
             "*vs best free*: cold Recall@20 against the best free judge; *vs knn*: against the "
             "content-KNN control.", "",
             "| backbone | judge | LM calls | accept rate | accepted precision | cold R@20 | cold N@20 "
             "| warm R@20 | vs best free | vs knn |", "|---|---|---|---|---|---|---|---|---|---|"]
    for doc, m in rows:
        e, methods = doc["methods"][m], doc["methods"]
        free = max((methods[f]["cold"]["recall@20"] for f in free_judges(methods)), default=None)
        knn = _get(methods, "knn", "cold", "recall@20")
        cold = e["cold"]["recall@20"]
        lines.append(f"| {doc['backbone']} | {REAL_JUDGES[m]} | {e.get('llm_calls', '-')} "
                     f"| {_fmt(_get(e, 'funnel', 'simulate', 'accept_rate'))} | {_fmt(_accepted_precision(e))} "
                     f"| {_fmt(cold)} | {_fmt(e['cold']['ndcg@20'])} | {_fmt(e['warm']['recall@20'])} "
                     f"| {_signed(cold - free if free is not None else None)} | {_signed(cold - knn if knn is not None else None)} |")
    for doc in docs:
        target, precision = needed_precision(doc)
        mine = _accepted_precision(doc["methods"].get("coldllm", {}))
        if target is None or mine is None:
            continue
        reach = (f"at an accepted precision of about {precision:.3f}" if precision is not None
                 else "with no accepted precision the oracle rows reach")
        lines += ["", f"- {doc['backbone']}: oracle judges that accept every real pair match the best free judge's "
                      f"cold Recall@20 ({target:.4f}) {reach}; the language-model judge's accepted precision is "
                      f"{mine:.3f}."]
    return lines


def one_pass_table(docs: list[dict[str, Any]]) -> list[str]:
    """The one-pass simulator beside the pairwise funnel (language-model judge) on the same backbone:
    calls, time and quality, and the goal's two ratios (calls saved, share of cold Recall@20 kept)."""
    pairs = [(doc, doc["methods"]["coldllm"], doc["methods"]["onepass"]) for doc in docs
             if "coldllm" in doc["methods"] and "onepass" in doc["methods"]]
    if not pairs:
        return []
    lines = ["", "**One pass per item against the pairwise funnel.** *LM calls*: language-model passes for the "
             "cold items; *seconds*: the method's stages on top of the backbone (for the pairwise funnel, of the "
             "last session of its resumed fine-tuning and simulation; the mean over seeds); *simulated precision*: real interactions "
             "among the simulated (accepted) pairs of the cold test items.", "",
             "| backbone | method | LM calls | seconds | simulated precision | cold R@20 | cold N@20 | overall R@20 "
             "| warm R@20 |", "|---|---|---|---|---|---|---|---|---|"]
    for doc, pairwise, one_pass in pairs:
        for name, e in (("pairwise funnel (coldllm)", pairwise), ("one pass (onepass)", one_pass)):
            lines.append(f"| {doc['backbone']} | {name} | {e.get('llm_calls', '-')} | {e.get('seconds', 0):.0f} "
                         f"| {_fmt(_accepted_precision(e))} | {_fmt(e['cold']['recall@20'])} "
                         f"| {_fmt(e['cold']['ndcg@20'])} | {_fmt(e['overall']['recall@20'])} "
                         f"| {_fmt(e['warm']['recall@20'])} |")
    for doc, pairwise, one_pass in pairs:
        if pairwise.get("llm_calls") and one_pass.get("llm_calls"):
            lines += ["", f"- {doc['backbone']}: {pairwise['llm_calls'] / one_pass['llm_calls']:.1f}x fewer "
                          f"language-model calls, {one_pass['cold']['recall@20'] / pairwise['cold']['recall@20']:.1%} "
                          "of the pairwise funnel's cold Recall@20 (goal: 20x fewer at 95% or more)."]
    return lines


# the content-mapping baselines, among which the headline names the best on cold Recall@20
MAPPINGS = ("deepmusic", "dropoutnet", "metaemb", "mtpr", "clcrec", "gar", "aldi")
HEADLINE_ROWS = {"backbone": "the backbone alone, no cold-start method", "knn": "content-KNN control",
                 "best-mapping": "the best content-mapping baseline", "coldllm-cosine": "ColdLLM funnel, free cosine judge",
                 "coldllm": "ColdLLM funnel, LoRA language-model judge", "onepass": "one-pass simulator (the preset)",
                 "paper-refiner": "the paper's candidates and 7B verdicts, same update (reference)"}


def headline_table(docs: list[dict[str, Any]]) -> list[str]:
    """The few rows a reader of the project's README needs, per backbone, generated from the same
    JSON as the results page (which holds every row and its provenance)."""
    lines = ["| backbone | method | cold R@20 | cold N@20 | warm R@20 | cold R@20, released protocol | LM calls "
             "| commit |", "|---|---|---|---|---|---|---|---|"]
    for doc in docs:
        methods = doc["methods"]
        mappings = [m for m in MAPPINGS if m in methods and on_files_backbone(doc, m)]
        for key, label in HEADLINE_ROWS.items():
            name = max(mappings, key=lambda m: methods[m]["cold"]["recall@20"], default=None) \
                if key == "best-mapping" else key
            if name not in methods:
                continue
            e = methods[name]
            shown = f"{label}: `{name}`" + ("" if on_files_backbone(doc, name) else " (earlier backbone)")
            lines.append(f"| {doc['backbone']} | {shown} | {_fmt(_get(e, 'cold', 'recall@20'))} "
                         f"| {_fmt(_get(e, 'cold', 'ndcg@20'))} | {_fmt(_get(e, 'warm', 'recall@20'))} "
                         f"| {_fmt(_get(e, 'paper_protocol', 'cold', 'recall@20'))} | {e.get('llm_calls', '-')} "
                         f"| `{e.get('commit', '?')[:7]}` |")
    return lines


ACROSS_ROWS = {"backbone": "backbone alone", "random": "random users (control)", "knn": "content-KNN (control)",
               "best-mapping": "best content mapping on validation",
               "strongest-mapping": "strongest content mapping on test",
               "default": "coldllm default (chosen on validation)"}


def _cell(entry: dict[str, Any] | None, setting: str = "cold") -> str:
    if entry is None:
        return "-"
    block, several = entry.get(setting, {}), len(entry.get("seeds", [])) > 1
    spread = lambda m: f" ± {block[m + '_std']:.4f}" if several and f"{m}_std" in block else ""  # noqa: E731
    seeds = f" ({len(entry['seeds'])} seeds)" if several else ""
    return (f"{_fmt(block.get('recall@20'))}{spread('recall@20')} / "
            f"{_fmt(block.get('ndcg@20'))}{spread('ndcg@20')}{seeds}")


# what reads the item text in each variant that the language-model comparison sets side by side
TEXT_READERS = ("onepass", "onepass-minilm-tuned", "onepass-llm-frozen", "onepass-llm", "onepass-llm-std",
                "onepass-llm-last", "onepass-llm-top4", "coldllm-cosine", "coldllm")


def _reader(entry: dict[str, Any]) -> str:
    """In words: which model reads the item text, and what of it learns."""
    cfg = entry.get("config", {})
    onepass, judge = cfg.get("filter", {}).get("onepass", {}), cfg.get("refiner", {}).get("judge")
    text_model = cfg.get("filter", {}).get("text_model", "")
    if cfg.get("filter", {}).get("towers") != "onepass":
        return ("LoRA-tuned " + cfg.get("refiner", {}).get("model", "") + " judge, per pair" if judge == "llm"
                else f"{text_model} vectors, frozen; cosine judge")
    if onepass.get("encoder", "vectors") == "vectors":
        return f"{text_model} vectors, frozen"
    model = onepass.get("text_model") or text_model
    tune = {"lora": "LoRA adapters learn", "full": "every weight learns", "frozen": "frozen"}[onepass.get("tune", "lora")]
    if onepass.get("lora_layers"):  # only with tune=lora (the encoder refuses it otherwise)
        tune = f"LoRA adapters on the top {onepass['lora_layers']} layers learn"
    extra = [x for x, on in (("standardised", onepass.get("standardize")), ("last token", onepass.get("pooling") == "last"),
                             (f"{onepass.get('epochs')} epochs at most", onepass.get("epochs"))) if on]
    return f"{model}, {tune}" + (f" ({', '.join(extra)})" if extra else "")


def new_item_seconds(dataset: str, backbone: str, method: str, serve: Path | None = None) -> float | None:
    """How soon a new item is recommendable in ``coldllm serve`` (median, ``benchmarks/serve_load.py``)
    with a run of this dataset, backbone and method, when one was measured
    (``results/serve/<dataset>-<backbone>-<method>.json``)."""
    path = (serve or RESULTS / "serve") / f"{dataset}-{backbone}-{method}.json"
    return json.loads(path.read_text()).get("new_item_seconds") if path.is_file() else None


def text_encoder_table(docs: list[dict[str, Any]], dataset: str | None = None, serve: Path | None = None) -> list[str]:
    """What each way of reading the item text buys (cold validation and test) and costs (the method's
    seconds, language-model passes, a new item's seconds in the service where measured): the one-pass
    simulator with frozen vectors, with a tuned MiniLM, with SmolLM2 frozen or LoRA-tuned, beside the
    funnel's free cosine and LoRA judges."""
    rows = [(doc, m, doc["methods"][m]) for doc in docs for m in TEXT_READERS if m in doc["methods"]]
    if not any(m.startswith("onepass-") for _, m, _ in rows):
        return []
    lines = [] if dataset else ["", "## What reading the text with a language model buys", "",
                                "The one-pass simulator with each text reader, beside the funnel's judges; the same "
                                "items, users, objective and update. *seconds*: the method's stages on top of the "
                                "backbone on 2 CPU cores (the mean over the row's seeds). Written by `benchmarks/funnel.py`.", ""]
    lines += [("| dataset " if dataset else "") + "| backbone | method | what reads the text | seeds | cold-val N@20 "
              "| cold R@20 | cold N@20 | seconds | LM passes | new item s (service) |",
              ("|---" if dataset else "") + "|---|---|---|---|---|---|---|---|---|---|"]
    for doc, method, e in rows:
        several = len(e.get("seeds", [])) > 1
        spread = lambda block, m: f" ± {block[m + '_std']:.4f}" if several and f"{m}_std" in block else ""  # noqa: E731
        cold, val = e.get("cold", {}), _get(e, "val", "cold") or {}
        lines.append(("| " + dataset + " " if dataset else "") +
                     f"| {doc['backbone']} | `{method}`{'' if on_files_backbone(doc, method) else ' (earlier backbone)'} "
                     f"| {_reader(e)} | {len(e.get('seeds', [])) or 1} "
                     f"| {_fmt(val.get('ndcg@20'))}{spread(val, 'ndcg@20')} "
                     f"| {_fmt(cold.get('recall@20'))}{spread(cold, 'recall@20')} "
                     f"| {_fmt(cold.get('ndcg@20'))}{spread(cold, 'ndcg@20')} | {_seconds(e.get('seconds'), 0)} "
                     f"| {e.get('llm_calls', '-')} | {_seconds(new_item_seconds(FOLDERS.get(doc['dataset'], doc['dataset']), doc['backbone'], method, serve))} |")
    return lines


def across_datasets_table(docs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Rows: the controls, the best content mapping (chosen on validation) and the default; one column
    per dataset and backbone. The default is each file's ``default`` (chosen on validation)."""
    columns = [(name, doc) for name, ds in docs.items() for doc in ds]
    head = "| method | " + " | ".join(f"{name} {doc['backbone']}" for name, doc in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for key, label in ACROSS_ROWS.items():
        cells, names = [], set()
        for _, doc in columns:
            methods = doc["methods"]
            if key == "best-mapping":
                mappings = [m for m in MAPPINGS if _get(methods.get(m, {}), "val", "cold", "ndcg@20") is not None
                            and on_files_backbone(doc, m)]
                name = max(mappings, key=lambda m: methods[m]["val"]["cold"]["ndcg@20"], default=None)
            elif key == "strongest-mapping":
                name = max((m for m in MAPPINGS if m in methods and on_files_backbone(doc, m)),
                           key=lambda m: methods[m]["cold"]["recall@20"],
                           default=None)
            elif key == "default":
                name = (doc.get("default") or {}).get("method")
            else:
                name = key
            names.add(name)
            cells.append(_cell(methods.get(name)) + (f" `{name}`" if key.endswith(("mapping", "default")) and name else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def prior_table(docs: list[dict[str, Any]]) -> list[str]:
    """Per funnel row: the prior the update started from (chosen on validation), its own test
    figures, and what the simulated pairs added on top of it; the candidate depth chosen."""
    rows = [(doc["backbone"], m, e) for doc in docs for m, e in doc["methods"].items() if e.get("prior_test")]
    if not rows:
        return []
    lines = ["", "## The prior and what the simulated pairs add", "",
             "Each funnel row starts its cold items at a prior in the backbone's space (`update.prior: best` chooses "
             "on cold validation among content-KNN, the filter's own content mapping and their blends) and moves "
             "them with its accepted pairs; *added* is the row's cold test figure minus its prior's (the last seed "
             "recorded, whose prior is shown). Written by `benchmarks/funnel.py`.", "",
             "| backbone | method | prior | depth k | prior cold R@20 | prior cold N@20 | row cold R@20 | added R@20 "
             "| added N@20 |", "|---|---|---|---|---|---|---|---|---|"]
    for backbone, method, e in rows:
        update, prior = e.get("update", {}), e["prior_test"]["cold"]
        last = e.get("per_seed", {}).get(str(max(e.get("seeds", [0]))), e)
        lines.append(f"| {backbone} | {method} | {update.get('prior', 'knn')} | {update.get('k', '-')} "
                     f"| {_fmt(prior['recall@20'])} | {_fmt(prior['ndcg@20'])} | {_fmt(last['cold']['recall@20'])} "
                     f"| {_signed(last['cold']['recall@20'] - prior['recall@20'])} "
                     f"| {_signed(last['cold']['ndcg@20'] - prior['ndcg@20'])} |")
    return lines


def comparison_table(docs: list[dict[str, Any]]) -> list[str]:
    """The default against content-KNN and the best content mapping (chosen on validation), with the
    rule the project uses: a win only when the means differ by more than the larger spread over seeds."""
    lines = []
    for doc in docs:
        methods, default = doc["methods"], (doc.get("default") or {}).get("method")
        mappings = [m for m in MAPPINGS if _get(methods.get(m, {}), "val", "cold", "ndcg@20") is not None
                    and on_files_backbone(doc, m)]
        best = max(mappings, key=lambda m: methods[m]["val"]["cold"]["ndcg@20"], default=None)
        # the hardest bar too: the mapping strongest on test (a comparison, never a choice)
        strongest = max(mappings, key=lambda m: methods[m]["cold"]["recall@20"], default=None)
        if default is None:
            continue
        if not lines:
            lines = ["", "## The default against the controls", "",
                     "Against content-KNN, the content mapping best on cold validation and the one strongest on "
                     "test (the hardest bar). Cold test figures, mean ± standard deviation over the seeds each row "
                     "lists. *verdict*: above or "
                     "below when the means differ by more than the larger of the two spreads, else level (a single "
                     "seed has no spread, so a one-seed comparison is never more than indicative).", "",
                     "| backbone | default | against | metric | default | other | difference | verdict |",
                     "|---|---|---|---|---|---|---|---|"]
        for other in dict.fromkeys(("knn", best, strongest)):
            if other not in methods:
                continue
            for metric in HEADLINE:
                a, b = methods[default]["cold"], methods[other]["cold"]
                spread = max(a.get(f"{metric}_std", 0.0), b.get(f"{metric}_std", 0.0))
                diff = a[metric] - b[metric]
                verdict = "level" if abs(diff) <= spread else ("above" if diff > 0 else "below")
                seeds = min(len(methods[default].get("seeds", [0])), len(methods[other].get("seeds", [0])))
                verdict += "" if seeds > 1 else " (one seed)"
                lines.append(f"| {doc['backbone']} | `{default}` | `{other}` | {metric} | {_fmt(a[metric])} "
                             f"| {_fmt(b[metric])} | {_signed(diff)} | {verdict} |")
    return lines


def update_curve_table(folder: Path) -> list[str]:
    """``update-curve.json`` (benchmarks/update_curve.py): cold validation and test NDCG@20 along the
    update, a diagnostic that reads test labels."""
    path = folder / "update-curve.json"
    if not path.exists():
        return []
    lines = ["", "## Along the update: validation against test (a diagnostic)", "",
             "`benchmarks/update_curve.py` runs the update from each run's prior and accepted pairs and scores "
             "cold validation and cold test at every check (reading test labels, so it chooses nothing). *best "
             "step*: where validation peaks, as the update's early stop would keep.", "",
             "| run | depth | k | pairs | val at start | val at best step | test at start | test at best step "
             "| test at the end | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in json.loads(path.read_text())["rows"]:
        curve = row["curve"]
        best = max(range(len(curve)), key=lambda i: curve[i]["val"])
        lines.append(f"| {row['run']} | {row['depth_mode']} | {row['k']} | {row['pairs']} | {_fmt(curve[0]['val'])} "
                     f"| {_fmt(curve[best]['val'])} (step {row['steps'][best]}) | {_fmt(curve[0]['test'])} "
                     f"| {_fmt(curve[best]['test'])} | {_fmt(curve[-1]['test'])} | `{row['commit'][:7]}` |")
    return lines


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def oracle_table(docs: list[dict[str, Any]], path: Path) -> list[str]:
    """The update's response to oracle judges of set quality, with the content-KNN level beside it."""
    rows = [(doc, m) for doc in docs for m in _methods(doc, oracle=True)]
    if not rows:
        return []
    lines = ["", "**The update's response curve (a diagnostic: these judges read the held-out labels).** An "
             "oracle accepts a real cold interaction among the filtered candidates with probability r and any "
             "other candidate with probability f; the pairs go through the same update as every variant. "
             "*precision* / *recall*: of the accepted pairs of the cold test items (recall = share of all "
             "cold-test interactions accepted). *knn*: the content-KNN control's cold Recall@20 on the same "
             "backbone.", "",
             "| backbone | oracle | accepted precision | accepted recall | cold R@20 | cold N@20 | knn cold R@20 |",
             "|---|---|---|---|---|---|---|"]
    for doc, m in rows:
        e = doc["methods"][m]
        knn = _get(doc["methods"], "knn", "cold", "recall@20")
        label = m[len(ORACLE):] + ("" if on_files_backbone(doc, m) else " (earlier backbone)")
        lines.append(f"| {doc['backbone']} | {label} | {_fmt(_get(e, 'funnel', 'simulate', 'refined_test', 'precision'))} "
                     f"| {_fmt(_get(e, 'funnel', 'simulate', 'refined_test', 'coverage'))} | {_fmt(e['cold']['recall@20'])} "
                     f"| {_fmt(e['cold']['ndcg@20'])} | {_fmt(knn)} |")
    _plot_oracle(docs, path)
    return lines + ["", f"![Cold Recall@20 against the accepted pairs' precision]({path.name})"]


# the candidate profile's columns that are correlated with cold Recall, in table order
PROFILE_TRAITS = ("precision", "coverage", "user_coverage", "items_with_a_real_user", "candidate_degree",
                  "top1pct_share")


def candidate_profile_table(folder: Path) -> list[str]:
    """Who each variant's accepted users are (``benchmarks/candidate_profile.py``), beside its cold Recall."""
    path = folder / "candidate-profile.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    lines = ["", "**Who the simulated users are** (`benchmarks/candidate_profile.py`): the pairs each variant fed the "
             "update, on the cold test items. *user coverage*: the mean over cold-test users of the share of their own "
             "cold-test items among the pairs (what Recall@K averages; pair coverage weighs heavy users more); "
             "*degree*: mean training interactions of the picked users (of the real cold-test users in brackets); "
             "*top 1%*: share of the pairs held by the 1% most-picked users. Last line per backbone: Spearman "
             "correlation of each column with cold Recall@20 across the variants.", "",
             "| backbone | variant | precision | pair coverage | user coverage | items with a real user | degree "
             "| top 1% | cold R@20 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['backbone']} | {r['variant']} | {_fmt(r['precision'])} | {_fmt(r['coverage'])} "
                     f"| {_fmt(r['user_coverage'])} | {_fmt(r['items_with_a_real_user'])} "
                     f"| {r['candidate_degree']:.1f} ({r['real_degree']:.1f}) | {_fmt(r['top1pct_share'])} "
                     f"| {_fmt(r['cold_recall@20'])} |")
    for backbone, rho in doc.get("correlations", {}).items():
        if rho:
            lines.append(f"| {backbone} | *Spearman with cold R@20* | " + " | ".join(f"{rho[k]:+.2f}" for k in PROFILE_TRAITS)
                         + " | |")
    return lines


def update_search_table(folder: Path) -> list[str]:
    """The update designs tried on cold validation (``benchmarks/update_search.py``)."""
    rows = [(path.stem.split("-", 2)[-1], r) for path in sorted(folder.glob("update-search-*.json"))
            for r in json.loads(path.read_text())["rows"]]
    if not rows:
        return []
    lines = ["", "**The update, designed on cold validation** (`benchmarks/update_search.py`; the test set is not "
             "looked at). One filter run per backbone at K=100; smaller K are its top-ranked candidates. *judge*: "
             "all = every filtered pair accepted, cosine = the free cosine judge. Each design changes the default "
             "in one respect; *accepted precision*: of the accepted pairs of the cold validation items.", "",
             "| backbone | filter | K | judge | design | val cold R@20 | val cold N@20 | best step "
             "| accepted precision | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for backbone, r in rows:
        kind = r["filter"].get("collab_source", "aldi") + (", users by cosine" if r["filter"].get("normalize_users") else "")
        lines.append(f"| {backbone} | {kind} | {r['k'] or '-'} | {r['judge']} "
                     f"| {r['design']} | {_fmt(r['val_cold']['recall@20'])} | {_fmt(r['val_cold']['ndcg@20'])} "
                     f"| {r.get('best_step', '-')} | {_fmt(_get(r, 'accepted_val', 'precision'))} | `{r['commit'][:10]}` |")
    return lines


def judge_trial_table(folder: Path) -> list[str]:
    """The language-model judge on cold-validation candidates beside the free judges."""
    path = folder / "judge-trials.json"
    if not path.exists():
        return []
    lines = ["", "**The language-model judge where it is used** (`benchmarks/judge_trial.py`): the filter's "
             "candidates of a seeded sample of cold *validation* items, labelled by whether the pair is a real "
             "interaction. AUC of each judge's score, pooled and *within items* (the mean of the per-item AUCs, with "
             "the candidate user's activity beside them), and the precision of the pairs each accepts at the language "
             "model's acceptance rate; *held-out AUC*: after tuning, on hard negatives (per-user examples) or on "
             "held-out warm items' candidates (per-item examples).", "",
             "| backbone | settings | pairs | real | AUC: LM / filter / cosine | within items: LM / filter / activity "
             "| LM accepts | precision: all / LM / filter / cosine | held-out AUC | tune s | judge pairs/s | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in json.loads(path.read_text())["rows"]:
        a, pr, w = r["auc"], r["precision_at_llm_accept_rate"], r.get("auc_within_item")
        within = " / ".join(_fmt(w.get(k)) for k in ("llm", "filter_score", "activity")) if w else "-"
        held = _get(r, "held_out", "after", "hard", "auc")
        held = _get(r, "held_out", "after", "candidates", "auc") if held is None else held
        lines.append(f"| {r['backbone']} | {' '.join(r['overrides']) or 'preset'} | {r['pairs']} | {r['real']} "
                     f"| {_fmt(a['llm'])} / {_fmt(a['filter_score'])} / {_fmt(a['cosine'])} | {within} "
                     f"| {_fmt(r['accept_rate_llm'])} "
                     f"| {_fmt(r['precision_all'])} / {_fmt(pr['llm'])} / {_fmt(pr['filter_score'])} / {_fmt(pr['cosine'])} "
                     f"| {_fmt(held)} | {r['tune_seconds']:.0f} "
                     f"| {r['pairs_per_second']:.1f} | `{r['commit'][:10]}` |")
    return lines


def _plot_oracle(docs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(docs), figsize=(5.5 * len(docs), 4.2), squeeze=False)
    for ax, doc in zip(axes[0], docs):
        names = [m for m in _methods(doc, oracle=True) if on_files_backbone(doc, m)]  # one backbone per curve
        if not names:
            continue
        prec = [_get(doc["methods"][m], "funnel", "simulate", "refined_test", "precision") or 0 for m in names]
        rec = [_get(doc["methods"][m], "funnel", "simulate", "refined_test", "coverage") or 0 for m in names]
        cold = [doc["methods"][m]["cold"]["recall@20"] for m in names]
        points = ax.scatter(prec, cold, c=rec, cmap="viridis", s=60)
        fig.colorbar(points, ax=ax, label="recall of the accepted pairs")
        for name, x, y in zip(names, prec, cold):
            ax.annotate(name[len(ORACLE):], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        level = _get(doc["methods"], "knn", "cold", "recall@20")
        if level is not None:
            ax.axhline(level, linestyle="--", color="gray", label="knn (content prior alone)")
        for method, marker in zip(REAL_JUDGES, "*sPD"):  # the real judges, where the curve would put them
            entry = doc["methods"].get(method)
            if entry is not None and on_files_backbone(doc, method) and _accepted_precision(entry):
                ax.scatter([_accepted_precision(entry)], [entry["cold"]["recall@20"]], marker=marker, s=90,
                           color="crimson", edgecolors="black", zorder=3, label=f"{method}: {REAL_JUDGES[method]}")
        ax.set_xscale("log")
        ax.set_xlabel("precision of the accepted pairs (cold test items)")
        ax.set_ylabel("cold Recall@20")
        ax.set_title(f"{doc['backbone']}: oracle judges through the update")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _plot(docs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in ORDER if any(m in d["methods"] for d in docs)]
    methods += sorted({m for d in docs for m in d["methods"] if not m.startswith(ORACLE)} - set(methods))
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 4), sharey=False)
    width = 0.8 / max(len(docs), 1)
    x = np.arange(len(methods))
    for ax, setting in zip(axes, SETTINGS):
        for j, doc in enumerate(docs):
            values = [doc["methods"][m].get(setting, {}).get("recall@20", np.nan)
                      if m in doc["methods"] and on_files_backbone(doc, m) else np.nan for m in methods]
            ax.bar(x + (j - (len(docs) - 1) / 2) * width, values, width, label=doc["backbone"])
        ax.set_xticks(x, methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{setting}: Recall@20")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def fill_block(path: Path | str, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``path``
    (a README's generated tables), atomically; a missing marker is an error naming the file."""
    path = Path(path)
    body = path.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(marker)}:start -->\n).*?(<!-- {re.escape(marker)}:end -->)", re.S)
    if not pattern.search(body):
        raise ValueError(f"{path}: no <!-- {marker}:start --> ... <!-- {marker}:end --> block to fill")
    with atomic_path(path) as tmp:
        tmp.write_text(pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), body))
