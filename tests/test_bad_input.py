"""Bad input ends a command with one line naming the key, file or line, exit code 2, nothing written.

One case per row of ``docs/bad-input.md``; ``python tests/test_bad_input.py`` runs every case and
prints that table again, with the messages exactly as the command line shows them.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))  # conftest's data, also when run as a script

from coldllm.cli import app  # noqa: E402
from conftest import community_raw  # noqa: E402

PRESET = "tiny.yaml"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # setup_logging's format


def write_project(root: Path) -> None:
    """A tiny CSV project under ``root`` with relative paths, so messages read as they would for a user."""
    raw = community_raw()
    (root / "data").mkdir()
    raw.interactions.to_csv(root / "data" / "inter.csv", index=False)
    raw.items.rename(columns={"text": "title"}).to_csv(root / "data" / "items.csv", index=False)
    (root / PRESET).write_text("""name: tiny
runs_dir: runs
data: {name: tiny, format: csv, path: data, interactions: inter.csv, items: items.csv, split: random,
       cache_dir: cache}
backbone: {model: mf, dim: 8, lr: 0.01, batch_size: 64, epochs: 2, eval_every: 1}
eval: {ks: [10, 20]}
content: {cache_dir: cache}
""")


# -- what each case does to the project --------------------------------------------------------------
def rewrite(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def parquet_ids(root: Path) -> None:
    """Interactions store item ids as integers, the item table as zero-padded text."""
    pd.DataFrame({"user": ["a", "b"], "item": [7, 8]}).to_parquet(root / "data" / "inter.parquet")
    pd.DataFrame({"item": ["007", "008"], "title": ["x", "y"]}).to_parquet(root / "data" / "items.parquet")


def citeulike(titles: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        folder = root / "cul"
        folder.mkdir()
        (folder / "users.dat").write_text("2 0 1\n1 1\n")
        (folder / "titles.txt").write_bytes(titles)

    return setup


def published_split(root: Path) -> None:
    folder = root / "data" / "split"
    folder.mkdir()
    from coldllm.data.readers import PUBLISHED_FILES

    for part, name in PUBLISHED_FILES.items():
        rows = "" if part == "train" else "u0,i1\n"
        (folder / name).write_text("user,item\n" + rows)


def trained_run(runner: CliRunner) -> Path:
    """A prepared run with an (untrained, saved) backbone, as ``coldllm train`` leaves one."""
    from coldllm.backbones import build_backbone
    from coldllm.backbones.train import save_backbone
    from coldllm.config import load_config
    from coldllm.data import load_dataset

    result = runner.invoke(app, ["prepare", "-c", PRESET])
    assert result.exit_code == 0, result.output
    cfg = load_config(PRESET)
    data = load_dataset(cfg.data)
    model = build_backbone(cfg.backbone, data.matrix("train"))
    save_backbone(model, cfg.run_dir / "backbone", "best")
    save_backbone(model, cfg.run_dir / "backbone", "last")
    return cfg.run_dir


def truncate(name: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "runs" / "tiny" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def corrupt_vector_cache(root: Path) -> None:
    folder = root / "cache" / "content" / "all-minilm-l6-v2"
    folder.mkdir(parents=True)
    pd.DataFrame({"hash": ["x"]}).to_parquet(folder / "index.parquet")
    (folder / "vectors.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr'")  # cut inside the header


@dataclass
class Case:
    id: str
    input: str  # what is wrong, in words, for the table
    args: list[str]  # the command and its overrides (``-c tiny.yaml`` is added)
    expect: str  # text the error line must contain: the key, the file and line
    setup: Callable[[Path], None] | None = None
    trained: bool = False  # the case needs a prepared run with a saved backbone
    preset: str = PRESET
    extra: dict = field(default_factory=dict)


OVERRIDE = "prepare"  # a config error stops any command; prepare is the cheapest that would run

CASES = [
    # -- settings: allowed values and ranges --------------------------------------------------------
    Case("backbone-model", "unknown backbone", [OVERRIDE, "--backbone.model=bogus"], "'backbone.model'"),
    Case("eval-ks-zero", "a cut-off of 0", [OVERRIDE, "--eval.ks=[0]"], "'eval.ks' entry 0 must be >= 1"),
    Case("eval-metric-k", "early-stopping metric at a K not measured", [OVERRIDE, "--eval.metric=ndcg@50"],
         "'eval.metric' is 'ndcg@50' but 50 is not in eval.ks"),
    Case("eval-metric-name", "unknown metric", [OVERRIDE, "--eval.metric=auc"], "'eval.metric' must look like"),
    Case("batch-size-zero", "batch of 0", [OVERRIDE, "--backbone.batch_size=0"], "'backbone.batch_size' must be >= 1"),
    Case("lr-negative", "negative learning rate", [OVERRIDE, "--backbone.lr=-0.01"], "'backbone.lr' must be > 0"),
    Case("cold-ratio", "cold share above 1", [OVERRIDE, "--data.cold_ratio=1.5"], "'data.cold_ratio' must be in (0, 1)"),
    Case("warm-ratios", "warm shares not summing to 1", [OVERRIDE, "--data.warm_ratios=[0.5,0.1,0.1]"],
         "'data.warm_ratios'"),
    Case("filter-index", "unknown FAISS index", [OVERRIDE, "--filter.index=bogus"], "'filter.index' must be one of"),
    Case("text-template-mapping", "item text template unquoted (YAML reads a mapping)",
         [OVERRIDE, "--data.text_template={title}"], "'data.text_template' expects str"),
    Case("text-template-positional", "item text template with a field that names no column",
         [OVERRIDE, "--data.text_template='{} paper'"], "'data.text_template' must name a column"),
    Case("override-not-yaml", "an override value YAML cannot read", [OVERRIDE, "--data.text_template={} x"],
         "the value is not valid YAML"),
    Case("filter-k", "K of 0", [OVERRIDE, "--filter.k=0"], "'filter.k' must be >= 1"),
    Case("baseline-name", "unknown baseline", [OVERRIDE, "--baselines.methods=[knn,dropnet]"],
         "'baselines.methods' entry 'dropnet'"),
    Case("baseline-params-name", "parameters for an unknown baseline", [OVERRIDE, "--baselines.params.alid.lr=0.1"],
         "'baselines.params.alid': no such method"),
    Case("baseline-params-range", "a baseline's learning rate of 0", [OVERRIDE, "--baselines.params.aldi.lr=0"],
         "'baselines.params.aldi.lr' must be > 0"),
    Case("template-placeholder", "prompt template with an unknown placeholder",
         [OVERRIDE, "--refiner.template={history_item: '- {titel}'}"],
         "'refiner.template.history_item' has an unknown placeholder {titel}"),
    Case("lora-rank", "LoRA rank 0", [OVERRIDE, "--refiner.lora.r=0"], "'refiner.lora.r' must be >= 1"),
    Case("content-encoder", "unknown text encoder (used to fall back to cached vectors)",
         [OVERRIDE, "--content.encoder=bogus"], "'content.encoder' must be one of"),
    Case("threshold", "unknown judge threshold (used to become 0.5)", [OVERRIDE, "--refiner.threshold=bogus"],
         "'refiner.threshold' must be one of"),
    Case("dim-zero", "embedding size 0", [OVERRIDE, "--backbone.dim=0"], "'backbone.dim' must be >= 1"),
    Case("epochs-negative", "negative epochs", [OVERRIDE, "--backbone.epochs=-1"], "'backbone.epochs' must be >= 1"),
    Case("sample-users", "negative user sample", [OVERRIDE, "--data.sample_users=-5"],
         "'data.sample_users' must be >= 0"),
    Case("keep-zero", "cosine judge keeping nothing", [OVERRIDE, "--refiner.keep=0"], "'refiner.keep' must be in (0, 1]"),
    Case("oracle-probability", "oracle probability above 1", [OVERRIDE, "--refiner.oracle_r=2"],
         "'refiner.oracle_r' must be in [0, 1]"),
    Case("negative-pool", "unknown negative pool", [OVERRIDE, "--update.negative_pool=hot"],
         "'update.negative_pool' must be one of"),
    Case("update-lr", "update learning rate of 0", [OVERRIDE, "--update.lr=0"], "'update.lr' must be > 0"),
    Case("stage-name", "unknown stage", [OVERRIDE, "--stages=[prepare,trian]"], "'stages' entry 'trian'"),
    Case("device", "unknown device", [OVERRIDE, "--backbone.device=gpu"], "'backbone.device' must look like"),
    Case("judge-file", "file judge without candidates from a file", [OVERRIDE, "--refiner.judge=file"],
         "'refiner.judge' is 'file'"),
    Case("yaml-syntax", "preset that is not valid YAML", [OVERRIDE], "bad.yaml:4: invalid YAML: mapping values are not allowed here",
         setup=rewrite("bad.yaml", "name: x\nbackbone:\n  dim: 8\n   lr: 1\n"), preset="bad.yaml"),
    Case("yaml-encoding", "preset that is not UTF-8", [OVERRIDE], "latin.yaml:2: not UTF-8",
         setup=rewrite("latin.yaml", b"name: x\nrefiner: {template: {instruction: caf\xe9}}\n"),
         preset="latin.yaml"),
    # -- data files ---------------------------------------------------------------------------------
    Case("inter-not-utf8", "interactions with a non-UTF-8 byte", ["prepare"], "data/inter.csv:3: not UTF-8",
         setup=rewrite("data/inter.csv", b"user,item\nu0,i1\nu1,i\xe92\n")),
    Case("items-not-utf8", "item titles with a non-UTF-8 byte", ["prepare"], "data/items.csv:3: not UTF-8",
         setup=rewrite("data/items.csv", b"item,title\ni1,ok\ni2,caf\xe9\n")),
    Case("titles-not-utf8", "CiteULike titles.txt with a non-UTF-8 byte",
         ["prepare", "--data.format=citeulike", "--data.path=cul"], "cul/titles.txt:2: not UTF-8",
         setup=citeulike(b"A\nB\xff\n")),
    Case("inter-header-only", "interactions file with a header only", ["prepare"],
         "data/inter.csv: no interactions", setup=rewrite("data/inter.csv", "user,item\n")),
    Case("items-header-only", "item table with a header only", ["prepare"], "data/items.csv: no items",
         setup=rewrite("data/items.csv", "item,title\n")),
    Case("split-train-empty", "published split whose training part is empty", ["prepare", "--data.split=published"],
         "data/split/warm_emb.csv: no training interactions", setup=published_split),
    Case("ids-int-vs-text", "item ids stored as integers in one file, zero-padded text in the other",
         ["prepare", "--data.format=parquet", "--data.interactions=inter.parquet", "--data.items=items.parquet"],
         "data/inter.parquet: item '7' is not in the item table (items.parquet), which has '007'",
         setup=parquet_ids),
    Case("duplicate-item", "the same item id twice with different texts", ["prepare"],
         "data/items.csv:4: item 'i1' appears again with another text (first at line 2)",
         setup=rewrite("data/items.csv", "item,title\ni1,first\ni2,b\ni1,second\n")),
    Case("timestamp", "a timestamp that is not a number", ["prepare", "--data.timestamp_field=ts"],
         "data/inter.csv:3: timestamp 'soon'", setup=rewrite("data/inter.csv", "user,item,ts\nu0,i1,1\nu1,i2,soon\n")),
    Case("rating-column", "a rating threshold with no rating column", ["prepare", "--data.min_rating=4"],
         "data/inter.csv: data.min_rating is set but the rating column 'rating' is not in"),
    Case("rating-not-number", "a rating that is not a number", ["prepare", "--data.min_rating=4"],
         "data/inter.csv:3: rating 'good'", setup=rewrite("data/inter.csv", "user,item,rating\nu0,i1,5\nu1,i2,good\n")),
    Case("rating-citeulike", "a rating threshold on CiteULike, which has no ratings",
         [OVERRIDE, "--data.format=citeulike", "--data.min_rating=4"], "CiteULike has no ratings"),
    # -- artifacts ----------------------------------------------------------------------------------
    Case("checkpoint-truncated", "truncated backbone checkpoint", ["evaluate"],
         "runs/tiny/backbone/best.safetensors: truncated or corrupt", setup=truncate("backbone/best.safetensors"),
         trained=True),
    Case("resume-truncated", "truncated resume checkpoint", ["train"],
         "runs/tiny/backbone/last.safetensors: truncated or corrupt", setup=truncate("backbone/last.safetensors"),
         trained=True),
    Case("vector-cache", "half-written text-vector cache", ["content"],
         "cache/content/all-minilm-l6-v2: text-vector cache is corrupt", setup=corrupt_vector_cache, trained=True),
]


def files_under(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size; the run's log and manifest record the attempt itself."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()
            and p.name not in ("log.txt", "manifest.json")} if folder.exists() else {}


def run_case(case: Case, root: Path) -> tuple[object, dict[str, int], dict[str, int]]:
    """Run ``case`` in a fresh project at ``root`` (the working directory); files before and after."""
    write_project(root)
    runner = CliRunner()
    if case.trained:
        trained_run(runner)
    if case.setup:
        case.setup(root)
    before = files_under(root / "runs") | {f"cache/{k}": v for k, v in files_under(root / "cache").items()}
    result = runner.invoke(app, [case.args[0], "-c", case.preset, *case.args[1:]])
    after = files_under(root / "runs") | {f"cache/{k}": v for k, v in files_under(root / "cache").items()}
    return result, before, after


def error_lines(output: str) -> list[str]:
    """What the command printed, less the log lines that ``setup_logging`` echoes to the terminal."""
    return [line for line in output.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, before, after = run_case(case, tmp_path)
    lines = error_lines(result.output)
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output  # one line, no traceback
    assert case.expect in lines[0], lines[0]
    assert after == before  # no new or changed artifact: no checkpoint, metrics or cache entry
    if not case.trained:  # the command created the run folder, and took it away again
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
        assert not (tmp_path / "cache" / "tiny").exists()


def test_ids_are_compared_as_written(tmp_path, monkeypatch):
    """Ids of digits only in one file ('007', which Arrow would read as the integer 7) and the same ids
    in a file where another id has a letter (so the column stays text) are the same ids."""
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path)
    inter = pd.read_csv(tmp_path / "data" / "inter.csv")
    items = pd.read_csv(tmp_path / "data" / "items.csv")
    padded = {item: f"{n:03d}" for n, item in enumerate(items["item"])}
    inter.assign(item=inter["item"].map(padded)).to_csv(tmp_path / "data" / "inter.csv", index=False)
    items = pd.concat([items.assign(item=items["item"].map(padded)),
                       pd.DataFrame({"item": ["x999"], "title": ["an item nobody saved"]})])
    items.to_csv(tmp_path / "data" / "items.csv", index=False)
    result = CliRunner().invoke(app, ["prepare", "-c", PRESET])
    assert result.exit_code == 0, result.output


def test_unquoted_yes_is_the_word_yes():
    from coldllm.config import load_config

    assert load_config(None, ["--refiner.threshold=yes"]).refiner.threshold == "yes"
    assert load_config(None, ["--filter.normalize_users=yes"]).filter.normalize_users is True


def render_table() -> str:
    """The table of ``docs/bad-input.md``, from running every case."""
    import tempfile

    rows = ["| # | input | command | what the user sees | exit |", "| --- | --- | --- | --- | --- |"]
    start = os.getcwd()
    for n, case in enumerate(CASES, start=1):
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                result, _, _ = run_case(case, Path(tmp))
            finally:
                os.chdir(start)
            # a preset is named by its absolute path; the table shows the project folder as <project>
            line = error_lines(result.output)[-1].replace(str(Path(tmp).resolve()), "<project>")
        line = line.replace("|", "\\|")
        command = " ".join(["coldllm", case.args[0], "-c", case.preset, *case.args[1:]]).replace("|", "\\|")
        rows.append(f"| {n} | {case.input} | `{command}` | `{line}` | {result.exit_code} |")
    return "\n".join(rows)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(render_table())
