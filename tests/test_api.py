"""The public Python face: the README's example runs as written on a finished tiny run, and its
answers are the service's."""

import re
from pathlib import Path

import pytest

from coldllm.api import Recommender
from coldllm.config import ConfigError
from test_serve import finished_run

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## In Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, capsys):
    run = finished_run(tmp_path, "--refiner.judge=cosine", "--filter.collab={epochs: 2, hidden: 16}",
                       "--filter.lm={epochs: 2, hidden: 16, out_dim: 8}")
    code = readme_example()
    assert '"runs/quickstart"' in code
    exec(compile(code.replace('"runs/quickstart"', repr(str(run))), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith("[[(")


def test_recommend_is_the_services_and_bad_calls_are_named(tmp_path):
    run = finished_run(tmp_path, "--refiner.judge=all", "--filter.towers=onepass", "--filter.onepass={epochs: 1}")
    with Recommender.load(run) as rec:
        users = rec.user_ids[:3]
        got = rec.recommend(users, k=4, only="cold")
        assert got == [rec.service.recommend(rec.service.user_index(u), 4, "cold") for u in users]
        cold = {str(i) for i in rec.service.data.item_ids[rec.service.data.cold_items]}
        assert all(item in cold for row in got for item, _ in row) and all(len(row) == 4 for row in got)
        (added,) = rec.add_items(["graph networks paper 999"])
        assert added["id"] == f"new-{len(rec.service.data.item_ids)}" and added["users"]
        with pytest.raises(ConfigError, match="user 'nobody' is not a user of this run"):
            rec.recommend(["nobody"])
        with pytest.raises(ConfigError, match=r"only='hot' must be one of"):
            rec.recommend(users, only="hot")
