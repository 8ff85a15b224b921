"""What a finished run did, for a person to read: ``coldllm report RUN_DIR``.

``runs`` reads a run folder and rebuilds the embeddings of every method it can score again,
``curves`` evaluates them at every cut-off from one top-100 per user, ``funnel`` measures the
filter and the judge against the held-out interactions, ``plots`` draws the PNGs and ``markdown``
writes ``report.md`` and the short table printed at the end of ``make run``. ``model_card`` writes
the README beside a tuned adapter. Nothing here is imported by the stages except ``model_card``,
so matplotlib is only loaded by the command that draws.
"""



def build_report(*args, **kwargs):
    """``build.build_report``, imported on first use: the stages import ``model_card`` from this
    package, and a tuning run should not load the evaluation and plotting code with it."""
    from .build import build_report as build

    return build(*args, **kwargs)


__all__ = ["build_report"]
