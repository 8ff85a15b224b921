"""The documentation says what the code does: every setting has help, the reference pages are the
ones the code gives, every command shown exists with the options and settings it names, and the
README stays short with its generated blocks in place."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from coldllm import config
from coldllm.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Every command of docs/bad-input.md is a deliberate mistake, run by tests/test_bad_input.py (which
# also writes that page's table); the other pages' commands must be right.
RUN_ELSEWHERE = {DOCS / "bad-input.md"}


def _gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- every setting has help --------------------------------------------------------------------------

def _settings(cls: type, prefix: str = ""):
    """(key, field) of every setting: sections, and the hyper-parameter dataclasses named by ``params=``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _settings(hints[f.name], f"{key}.")
            continue
        yield key, f
        target = config.params_of(f)
        for name, sub in (target.items() if isinstance(target, dict) else [("", target)] if target else []):
            yield from _settings(sub, f"{key}.{name}." if name else f"{key}.")


def test_every_setting_has_help():
    keys = dict(_settings(config.RunConfig))
    # the walk reaches the nested hyper-parameters, one dataclass per mapping (or per method)
    assert {"refiner.lora.r", "filter.onepass.align", "baselines.params.aldi.alpha", "refiner.template.yes"} <= set(keys)
    missing = [key for key, f in keys.items() if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"settings without a help text: {missing}"


def test_every_check_says_what_it_allows():
    """The reference's 'allowed' column is read from the checks: none may be silent."""
    silent = [key for key, f in _settings(config.RunConfig) for check in config.checks_of(f) if not config.allowed(check)]
    assert not silent, f"checks without words (wrap them in config._allows): {silent}"


def test_the_walk_finds_a_setting_without_help():
    @dataclasses.dataclass
    class Bare:
        x: int = 1

    assert [k for k, f in _settings(Bare) if not f.metadata.get("help")] == ["x"]


# -- the generated reference pages are current -------------------------------------------------------

def test_configuration_reference_is_current():
    gen = _gen_reference()
    page = gen.config_reference()
    assert "| `refiner.lora.r` | int | `8` | >= 1 | LoRA rank. |" in page
    assert "| `backbone.model` | str | `lightgcn` | one of: mf, lightgcn, ngcf |" in page
    assert (DOCS / "reference" / "configuration.md").read_text() == page, \
        "docs/reference/configuration.md is out of date: run python docs/gen_reference.py"


def test_api_reference_is_current():
    pytest.importorskip("fastapi")
    gen = _gen_reference()
    page = gen.api_reference()
    for endpoint in ("`POST /items`", "`POST /items/batch`", "`GET /items/{item_id}`",
                     "`GET /users/{user_id}/recommendations`", "`GET /health`"):
        assert f"### {endpoint}" in page
    assert (DOCS / "reference" / "api.md").read_text() == page, \
        "docs/reference/api.md is out of date: run python docs/gen_reference.py"


# -- every command shown exists ----------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:[A-Z_]+=\S+ )*(?:coldllm|make|python benchmarks/|python docs/)[^`]*)`")


def _pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if p not in RUN_ELSEWHERE)


def _shell_lines(page: Path) -> list[str]:
    """Command lines of a page: its shell code blocks (continuations joined) and inline code spans."""
    text = page.read_text()
    lines = []
    for lang, body in FENCE.findall(text):
        if lang in ("", "bash", "sh", "shell", "console"):
            lines += body.replace("\\\n", " ").splitlines()
    lines += INLINE.findall(FENCE.sub("", text))
    return [line.strip() for line in lines if line.strip()]


def _commands(tool: str) -> list[tuple[str, list[str]]]:
    found = []
    for page in _pages():
        for line in _shell_lines(page):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an inline span cut mid-quote
                continue
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words.pop(0)
            if words[:1] == [tool] or (tool.startswith("python ") and words[:2] == tool.split()[:1] + words[1:2]
                                       and words[1].startswith(tool.split()[1])):
                found.append((f"{page.relative_to(ROOT)}: {line}", words))
    return found


def _placeholder(word: str) -> bool:
    return "<" in word or "..." in word


def _config_key(parts: list[str], cls: type = config.RunConfig) -> bool:
    """Whether the dotted key ``parts`` names a setting (inside a hyper-parameter mapping too)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not parts or parts[0] not in fields:
        return False
    f, hint = fields[parts[0]], typing.get_type_hints(cls)[parts[0]]
    if dataclasses.is_dataclass(hint):
        return _config_key(parts[1:], hint)
    rest, target = parts[1:], config.params_of(f)
    if not rest or target is None:
        return not rest or typing.get_origin(hint) is dict or hint is dict  # a free mapping takes any key
    if isinstance(target, dict):
        return rest[0] in target and (len(rest) == 1 or _config_key(rest[1:], target[rest[0]]))
    return _config_key(rest, target)


COLDLLM = _commands("coldllm")


def test_the_docs_show_commands():
    shown = {words[1] for _, words in COLDLLM if len(words) > 1}
    assert {"run", "train", "serve", "fetch", "report", "prepare", "evaluate"} <= shown


@pytest.mark.parametrize("where,words", COLDLLM, ids=[w for w, _ in COLDLLM])
def test_coldllm_command_exists(where, words):
    group = typer.main.get_command(app)
    args = words[1:]
    if not args or args[0].startswith("-"):
        result = CliRunner().invoke(app, args or ["--help"])
        assert result.exit_code == 0, result.output
        return
    name = args[0]
    if _placeholder(name):
        return  # `coldllm <command> --help`
    assert name in group.commands, f"{where}: no command {name!r}"
    command = group.commands[name]
    result = CliRunner().invoke(app, [name, "--help"], env={"TERMINAL_WIDTH": "200", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    declared = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    overrides, preset = [], None
    for i, word in enumerate(args[1:], start=1):
        if not word.startswith("-") or _placeholder(word):
            continue
        option = word.split("=", 1)[0]
        if option in declared:
            assert option in result.output, f"{where}: {option} is not in `coldllm {name} --help`"
            if option in ("-c", "--config"):
                preset = word.split("=", 1)[1] if "=" in word else args[i + 1]
                assert _placeholder(preset) or (ROOT / preset).is_file(), f"{where}: no preset {preset}"
            continue
        assert command.context_settings.get("allow_extra_args"), f"{where}: `coldllm {name}` has no option {option}"
        assert option.startswith("--") and "=" in word, f"{where}: {word} is neither an option nor --key=value"
        assert _config_key(option[2:].split(".")), f"{where}: {option[2:]} is not a setting"
        overrides.append(word)
    if command.context_settings.get("allow_extra_args") and not any(map(_placeholder, args)):
        # the values too: the preset and overrides load as a config, every check passed
        config.load_config(ROOT / preset if preset else None, overrides)


def test_config_key_lookup():
    assert _config_key(["refiner", "lora", "r"]) and _config_key(["baselines", "params", "aldi", "alpha"])
    assert _config_key(["name"]) and _config_key(["reuse", "train"]) and _config_key(["refiner", "vllm", "dtype"])
    assert not _config_key(["refiner", "lora", "rank"]) and not _config_key(["baselines", "params", "alid", "lr"])
    assert not _config_key(["backbone", "modle"]) and not _config_key(["filter", "k", "x"])


SCRIPTS = [(w, words) for w, words in _commands("python benchmarks/") + _commands("python docs/")]


@pytest.mark.parametrize("where,words", SCRIPTS, ids=[w for w, _ in SCRIPTS])
def test_script_command_exists(where, words):
    """A script shown in the docs exists and declares every option shown with it."""
    script = ROOT / words[1]
    assert script.is_file(), f"{where}: no {words[1]}"
    source = script.read_text()
    for word in words[2:]:
        word = word.strip("'\"")
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if f'"{option}"' not in source and "parse_known_args" in source and "=" in word:
                # a setting the script passes on to its runs: it must be one
                assert _config_key(option[2:].split(".")), f"{where}: {option[2:]} is not a setting"
                config.load_config(None, [word])
                continue
            assert f'"{option}"' in source, f"{where}: {words[1]} has no option {option}"


MAKE = _commands("make")


@pytest.mark.parametrize("where,words", MAKE, ids=[w for w, _ in MAKE])
def test_make_target_exists(where, words):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for word in words[1:]:
        if "=" in word:
            variable, value = word.split("=", 1)
            assert re.search(rf"^{variable} \?=", (ROOT / "Makefile").read_text(), re.M), f"{where}: no {variable}"
            assert not value.startswith("configs/") or (ROOT / value).is_file(), f"{where}: no {value}"
        else:
            assert word in targets, f"{where}: no make target {word}"


def test_curl_paths_are_routes():
    """The service's example requests ask for routes the service has."""
    gen = pytest.importorskip("fastapi") and _gen_reference()
    routes = [(m.upper(), re.sub(r"\{[^}]+\}", "[^/]+", p)) for p, ms in gen.openapi_schema()["paths"].items()
              for m in ms]
    requests = [(w, words) for w, words in _commands("curl")]
    assert requests
    for where, words in requests:
        method = words[words.index("-X") + 1] if "-X" in words else "GET"
        url = next(w for w in words if "localhost" in w)
        path = url.split("localhost:8000", 1)[1].split("?", 1)[0]
        assert any(m == method and re.fullmatch(p, path) for m, p in routes), f"{where}: no route {method} {path}"


# -- the README and the site -------------------------------------------------------------------------

def test_readme_is_short_and_keeps_its_generated_blocks():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    order = [text.index(f"<!-- {marker} -->") for marker in
             ("datasets-headline:start", "datasets-headline:end", "citeulike-headline:start", "citeulike-headline:end")]
    assert order == sorted(order)
    assert "make run" in text and "make test" in text


@pytest.mark.parametrize("page", [ROOT / "README.md"], ids=["README.md"])
def test_links_of_the_readme_exist(page):
    """The README is not part of the site (the site's build checks its own pages' links)."""
    for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
        if not re.match(r"\w+:", target):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_site_builds_strict(tmp_path):
    """mkdocs.yml's nav lists every page, and no link or anchor is broken (CI runs `make docs` too)."""
    pytest.importorskip("mkdocs")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
