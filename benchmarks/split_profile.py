"""How much of a cold part's per-user metric rests on a few items: the held-out cold items that the
most users hold, and the share of the part's users each one touches.

    python benchmarks/split_profile.py [--preset configs/ml-1m.yaml] [--top 5]

Recall@20 and NDCG@20 are averaged over users, so an item that half of a part's users hold is half
of that part's score: whether a method ranks that one item high moves the figure more than all the
rest. Nothing is trained or scored here; the split is read as the preset makes it. Writes
``results/<dataset>/split-profile.json`` (one row per part, with the resolved data config, commit
and date) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from coldllm.config import load_config
from coldllm.data import load_dataset
from coldllm.utils import git_commit, now_iso
from results import results_dir, write_results

ROOT = Path(__file__).resolve().parent.parent


def part_profile(part, titles, top: int) -> dict:
    """``part``: a (users x items) held-out matrix. Its users, items, and the ``top`` items by held-out
    users, each with the share of the part's users that hold it."""
    holders, users = part.getnnz(axis=0), int((part.getnnz(axis=1) > 0).sum())
    order = np.argsort(-holders, kind="stable")[:top]
    return {"users": users, "items": int((holders > 0).sum()),
            "median_users_per_item": float(np.median(holders[holders > 0])) if users else 0.0,
            "top": [{"item": int(i), "title": str(titles[i])[:80], "users": int(holders[i]),
                     "share_of_users": round(float(holders[i]) / max(users, 1), 4)} for i in order if holders[i]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "ml-1m.yaml")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(args.preset)
    data = load_dataset(cfg.data)
    provenance = {"config": {"data": dataclasses.asdict(cfg.data)}, "commit": git_commit(ROOT), "created": now_iso(),
                  "command": f"python benchmarks/split_profile.py --preset {args.preset} --top {args.top}"}
    rows = [{"part": part, **part_profile(data.matrix(part), data.item_text, args.top), **provenance}
            for part in ("cold_val", "cold_test")]
    out = results_dir(cfg.data.name) / "split-profile.json"
    write_results(out, {"dataset": cfg.data.name, "rows": rows})
    print("| part | users | items | median users per item | most held items (users, share of the part's users) |")
    print("|---|---|---|---|---|")
    for row in rows:
        top = "; ".join(f"{t['title']} ({t['users']}, {t['share_of_users']:.0%})" for t in row["top"])
        print(f"| {row['part']} | {row['users']} | {row['items']} | {row['median_users_per_item']:g} | {top} |")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
