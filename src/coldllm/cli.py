"""The ``coldllm`` command line: one command per stage plus ``run`` for all of them.

Every command takes ``--config configs/<preset>.yaml`` and any number of ``--key.sub=value``
overrides, e.g. ``coldllm train -c configs/citeulike.yaml --backbone.model=mf --name=mf``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

import typer

from . import pipeline
from .config import ConfigError, RunConfig, load_config
from .data import DataError
from .utils import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML preset under configs/.")


def _setup(ctx: typer.Context, config: Optional[Path]) -> pipeline.Run:
    cfg: RunConfig = load_config(config, ctx.args)
    setup_logging(cfg.run_dir / "log.txt")
    return pipeline.Run(cfg)


def friendly(fn):
    """Bad input ends the command with one clear line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError) as err:
            logging.getLogger("coldllm").debug("bad input", exc_info=True)
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command(context_settings=EXTRA)
@friendly
def prepare(ctx: typer.Context, config: Optional[Path] = ConfigOpt) -> None:
    """Read the raw data, split it and cache the prepared dataset."""
    pipeline.prepare(_setup(ctx, config))


@app.command(context_settings=EXTRA)
@friendly
def train(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
          fresh: bool = typer.Option(False, help="Ignore an existing checkpoint.")) -> None:
    """Train the collaborative backbone with BPR (resumes from runs/<name>/backbone/last.safetensors)."""
    pipeline.train(_setup(ctx, config), resume=not fresh)


@app.command(context_settings=EXTRA)
@friendly
def evaluate(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
             split: str = typer.Option("test", help="val or test.")) -> None:
    """Full-ranking Recall/NDCG on the overall, cold and warm settings."""
    pipeline.evaluate(_setup(ctx, config), split)


@app.command(context_settings=EXTRA)
@friendly
def content(ctx: typer.Context, config: Optional[Path] = ConfigOpt) -> None:
    """Encode every item's text (cached by model and text hash)."""
    pipeline.content(_setup(ctx, config))


@app.command(context_settings=EXTRA)
@friendly
def baselines(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
              method: Optional[list[str]] = typer.Option(None, help="Only these methods (repeatable).")) -> None:
    """Fit and evaluate the content-mapping cold-start methods on the trained backbone."""
    pipeline.baselines(_setup(ctx, config), method)


def _funnel_command(stage: str, doc: str) -> None:
    def command(ctx: typer.Context, config: Optional[Path] = ConfigOpt) -> None:
        from .funnel.stages import FUNNEL_STAGES

        FUNNEL_STAGES[stage](_setup(ctx, config))

    command.__doc__ = doc
    app.command(name=stage, context_settings=EXTRA)(friendly(command))


_funnel_command("filter", "Coupled filter: the top-K users of every cold item (ALDI + LM two-tower, FAISS).")
_funnel_command("finetune", "LoRA-fine-tune the language-model judge on warm training interactions.")
_funnel_command("simulate", "Judge every filtered pair; accepted pairs become simulated interactions.")
_funnel_command("update", "Retrain the backbone on real + simulated interactions, then evaluate.")


@app.command(context_settings=EXTRA)
@friendly
def run(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
        force: bool = typer.Option(False, help="Redo stages already done.")) -> None:
    """Every stage in order, skipping the finished ones."""
    pipeline.run_all(_setup(ctx, config), force=force)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
