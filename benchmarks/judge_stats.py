"""How good is the judge where it is used? AUCs on the filter's own candidates, against free judges.

The refiner only sees pairs the filter already ranked on-topic, so its value is measured there: on
the candidates of cold validation / test items, labelled by whether the pair is a real held-out
interaction. Two free judges sit beside it: the filter's own score, and the cosine between the
candidate's text vector and the mean text vector of the user's history as the prompt shows it.
A language-model judge that cannot beat them does not earn its cost. A third, the combined judge,
asks whether P(Yes) adds anything to the cosine: a logistic regression on the two, fitted on the
finetune stage's held-out *warm* pairs only (never on cold labels), applied to the candidates.

A judge decides among one item's candidates, so each AUC is also taken within items (the mean of
the per-item AUCs), beside two signals that read no text: how much each candidate user does (its
training interactions) on the candidates, and how popular each item is on the held-out warm pairs,
where a judge can score well by telling popular items from obscure ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from coldllm.funnel.filter import funnel_coverage
from coldllm.funnel.judges import cosine_judge, is_real
from coldllm.funnel.refiner import auc, auc_within


def combined_features(p_yes: np.ndarray, cosine: np.ndarray) -> np.ndarray:
    """The combined judge's inputs: the judge's log-odds (clipped away from 0 and 1) and the cosine."""
    p = np.clip(np.asarray(p_yes, np.float64), 1e-6, 1 - 1e-6)
    return np.column_stack([np.log(p / (1 - p)), np.asarray(cosine, np.float64)])


def held_out_features(held_out: pd.DataFrame, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of held-out warm examples: P(Yes) after tuning and the cosine to the
    history the prompt showed."""
    histories = [np.asarray(h, np.int64) for h in held_out["history"]]
    cosine = cosine_judge(np.arange(len(held_out)), held_out["item"].to_numpy(), histories, vectors)
    return combined_features(held_out["p_after"].to_numpy(), cosine), held_out["label"].to_numpy()


def fit_combined_judge(held_out: pd.DataFrame, vectors: np.ndarray):
    """The combined judge, fitted on held-out warm examples (e.g. the random and hard sets together)."""
    features, labels = held_out_features(held_out, vectors)
    return LogisticRegression().fit(features, labels)


def judges_on_candidates(simulated: pd.DataFrame, candidates: pd.DataFrame, truth: np.ndarray,
                         histories: list[np.ndarray], vectors: np.ndarray, combined=None,
                         degree: np.ndarray | None = None) -> dict[str, float]:
    """AUC of the judge's P(Yes), the filter score and the cosine on the candidates of the items in
    ``truth``; with ``combined`` (``fit_combined_judge``), also the combined judge's; with
    ``degree`` (each user's training interactions), also that of the candidate's activity; and
    under ``within_item`` the same AUCs taken within each item (``auc_within``).

    Precision is counted on those items' candidates only (see ``filter.funnel_coverage``)."""
    items = np.unique(truth[:, 1])
    pairs = simulated[simulated["item"].isin(items)].merge(candidates[["user", "item", "score"]], on=["user", "item"])
    labels = is_real(pairs, truth)
    cosine = cosine_judge(pairs["user"].to_numpy(), pairs["item"].to_numpy(), histories, vectors)
    accepted = pairs["accepted"].to_numpy()
    scores = {"judge": pairs["p_yes"].to_numpy(), "filter_score": pairs["score"].to_numpy(), "cosine": cosine}
    if degree is not None:
        scores["activity"] = np.asarray(degree, np.float64)[pairs["user"].to_numpy()]
    extra = {} if combined is None or not len(pairs) else {
        "auc_combined": auc(labels, combined.predict_proba(combined_features(pairs["p_yes"], cosine))[:, 1])}
    if degree is not None:
        extra["auc_activity"] = auc(labels, scores["activity"])
    extra["within_item"] = {f"auc_{name}": auc_within(labels, s, pairs["item"].to_numpy()) for name, s in scores.items()}
    return {
        "pairs": int(len(pairs)), "real": int(labels.sum()),
        "auc_judge": auc(labels, pairs["p_yes"].to_numpy()),
        "auc_filter_score": auc(labels, pairs["score"].to_numpy()),
        "auc_cosine": auc(labels, cosine), **extra,
        "precision_all": float(labels.mean()) if len(labels) else 0.0,
        "precision_accepted": float(labels[accepted].mean()) if accepted.any() else 0.0,
        "accept_rate": float(accepted.mean()) if len(accepted) else 0.0,
    }


def judges_on_held_out(held_out: pd.DataFrame, vectors: np.ndarray, folds: int = 5,
                       popularity: np.ndarray | None = None) -> dict[str, float]:
    """AUC of the judge before / after fine-tuning, of the cosine and of the combined judge
    (``folds``-fold cross-validated: each pair scored by a fit that did not see it), on held-out warm
    examples; with ``popularity`` (each item's training interactions), also that of the item's
    popularity, which reads neither the user nor any text."""
    features, labels = held_out_features(held_out, vectors)
    out = {"n": int(len(held_out)), "auc_before": auc(labels, held_out["p_before"].to_numpy()),
           "auc_after": auc(labels, held_out["p_after"].to_numpy()), "auc_cosine": auc(labels, features[:, 1])}
    if popularity is not None:
        out["auc_popularity"] = auc(labels, np.asarray(popularity, np.float64)[held_out["item"].to_numpy()])
    if min(labels.sum(), (1 - labels).sum()) >= folds:
        combined = cross_val_predict(LogisticRegression(), features, labels, cv=folds, method="predict_proba")[:, 1]
        out["auc_combined_cv"] = auc(labels, combined)
    return out


def candidate_profile(candidates: pd.DataFrame, truth: np.ndarray, degree: np.ndarray) -> dict[str, float]:
    """Who a candidate set picks, on the items in ``truth`` ((n, 2) held-out cold pairs).

    ``user_coverage`` is the mean over the users in ``truth`` of the share of their own held-out
    pairs among the candidates: Recall@K averages per user, so a covered pair of a user with two
    held-out items is worth ten times one of a user with twenty, which pair coverage cannot see.
    ``degree``: each user's number of training interactions; ``candidate_degree`` is its mean over
    the candidate slots, ``real_degree`` over the held-out pairs (whom a filter would ideally pick);
    ``top1pct_share``: the share of slots held by the 1% of users picked most often (hubness).
    """
    items = np.unique(truth[:, 1])
    scoped = candidates[candidates["item"].isin(items)]
    users = scoped["user"].to_numpy()
    real = is_real(scoped, truth)
    held_users, held_counts = np.unique(truth[:, 0], return_counts=True)
    hit_users, hits = np.unique(users[real], return_counts=True)
    covered = np.zeros(len(held_users))
    covered[np.searchsorted(held_users, hit_users)] = hits
    slots = np.sort(np.bincount(users, minlength=len(degree)))[::-1]
    top = max(1, int(np.ceil(0.01 * np.count_nonzero(slots))))
    return {
        **funnel_coverage(candidates, truth), "user_coverage": float((covered / held_counts).mean()),
        "items_with_a_real_user": float(scoped.loc[real, "item"].nunique() / len(items)),
        "distinct_users": int(np.count_nonzero(slots)), "top1pct_share": float(slots[:top].sum() / max(len(users), 1)),
        "candidate_degree": float(degree[users].mean()) if len(users) else 0.0,
        "real_degree": float(degree[truth[:, 0]].mean()),
    }
