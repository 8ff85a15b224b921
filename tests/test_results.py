import json

from coldllm.results import record_method, render_table


def metrics(x):
    return {s: {"recall@20": x, "ndcg@20": x / 2, "users": 3} for s in ("overall", "cold", "warm")}


def test_record_merges_methods_and_renders(tmp_path):
    path = tmp_path / "mf.json"
    record_method(path, dataset="toy", split="random", backbone="mf", method="backbone", metrics=metrics(0.1),
                  config={"a": 1}, extra={"seconds": 5}, commit="abc123")
    record_method(path, dataset="toy", split="random", backbone="mf", method="knn", metrics=metrics(0.3),
                  config={"a": 2}, commit="def456")
    doc = json.loads(path.read_text())
    assert set(doc["methods"]) == {"backbone", "knn"} and doc["config"] == {"a": 2}
    assert doc["methods"]["backbone"]["commit"] == "abc123" and doc["methods"]["knn"]["cold"]["recall@20"] == 0.3
    reference = {"source": "paper", "backbone": "mf", "methods": {"knn": {"cold": {"recall@20": 0.25}}}}
    text = render_table(tmp_path, reference, notes="## Notes\nwhy")
    row = next(line for line in text.splitlines() if line.startswith("| mf | knn |"))
    assert "0.3000" in row and "0.2500" in row and "`def456`" in row
    assert text.index("| mf | backbone |") < text.index("| mf | knn |")
    assert (tmp_path / "recall.png").exists() and text.rstrip().endswith("why")
