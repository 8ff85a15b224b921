"""Where everything of a run lives: the one place that spells a run folder's file names.

Stages, the service, the report and the benchmarks ask a ``RunLayout`` for a path; none of them
writes ``"candidates.parquet"`` itself, so a file that moves moves once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder, as a stage's artifact list names it."""
        return path.relative_to(self.root).as_posix()

    # -- the run -----------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def metrics(self, split: str, what: str = "") -> Path:
        """The metrics file of ``split``: the backbone's, or (``what="coldllm"``) after the update."""
        return self.root / f"metrics_{what + '_' if what else ''}{split}.json"

    # -- train ---------------------------------------------------------------------------------------
    @property
    def backbone(self) -> Path:
        return self.root / "backbone"

    @property
    def backbone_meta(self) -> Path:
        return self.backbone / "backbone.json"

    @property
    def backbone_best(self) -> Path:
        return self.backbone / "best.safetensors"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    def baseline(self, method: str) -> Path:
        """One baseline's figures and settings, as the baselines stage measured it."""
        return self.baselines / f"{method}.json"

    # -- filter --------------------------------------------------------------------------------------
    @property
    def filter(self) -> Path:
        return self.root / "filter"

    @property
    def candidates(self) -> Path:
        return self.filter / "candidates.parquet"

    @property
    def warm_candidates(self) -> Path:
        return self.filter / "warm_candidates.parquet"

    @property
    def filter_report(self) -> Path:
        return self.filter / "report.json"

    @property
    def filter_towers(self) -> Path:
        """The fitted filter: the user vectors it searched and its item-side stacks."""
        return self.filter / "towers.safetensors"

    @property
    def filter_prior(self) -> Path:
        """The filter's own content mapping of the cold items, in the backbone's space."""
        return self.filter / "prior.safetensors"

    @property
    def onepass_checkpoint(self) -> Path:
        """Where an end-to-end one-pass fit keeps its place (resumed only under the same settings)."""
        return self.filter / "onepass_checkpoint.safetensors"

    @property
    def text_encoder(self) -> Path:
        """The one-pass simulator's text encoder, when it learned one."""
        return self.filter / "text_encoder"

    # -- finetune ------------------------------------------------------------------------------------
    @property
    def refiner(self) -> Path:
        return self.root / "refiner"

    @property
    def adapter(self) -> Path:
        return self.refiner / "adapter"

    @property
    def adapter_config(self) -> Path:
        """PEFT's description of the adapter, beside its weights: present once an adapter is saved whole."""
        return self.adapter / "adapter_config.json"

    def held_out(self, part: str) -> Path:
        """The tuned judge's P(Yes) on a held-out part (random or hard negatives), with the labels."""
        return self.refiner / f"held_out_{part}.parquet"

    @property
    def refiner_checkpoint(self) -> Path:
        """Where a fine-tuning keeps its place (resumed only by the same inputs)."""
        return self.refiner / "checkpoint.safetensors"

    @property
    def threshold(self) -> Path:
        return self.refiner / "threshold.json"

    @property
    def refiner_report(self) -> Path:
        return self.refiner / "report.json"

    # -- simulate ------------------------------------------------------------------------------------
    @property
    def simulate(self) -> Path:
        return self.root / "simulate"

    @property
    def simulated(self) -> Path:
        return self.simulate / "simulated.parquet"

    @property
    def simulate_report(self) -> Path:
        return self.simulate / "report.json"

    # -- update --------------------------------------------------------------------------------------
    @property
    def update(self) -> Path:
        return self.root / "update"

    @property
    def embeddings(self) -> Path:
        """User and item rows after the update, as it validated them."""
        return self.update / "embeddings.safetensors"

    @property
    def update_choices(self) -> Path:
        """What the update chose on validation (prior, depth, steps), for the items that come later."""
        return self.update / "update.json"

    @property
    def report(self) -> Path:
        """``coldllm report``'s folder (unless it is told another)."""
        return self.root / "report"

    # -- serve ---------------------------------------------------------------------------------------
    @property
    def serve(self) -> Path:
        return self.root / "serve"

    @property
    def store(self) -> Path:
        return self.serve / "items.sqlite"

    @property
    def guard(self) -> Path:
        """The judge's reference users and warm items (``funnel.guard``), fitted once per adapter: the
        simulation's centring and the service's refusals read it."""
        return self.serve / "guard.json"


def stage_artifacts(layout: RunLayout) -> dict[str, tuple[Path, ...]]:
    """What each stage leaves behind; a finished stage whose artifact is missing or unreadable is redone."""
    return {
        "train": (layout.backbone_meta, layout.backbone_best),
        "filter": (layout.candidates, layout.warm_candidates, layout.filter_report),
        "finetune": (layout.refiner_report, layout.threshold, layout.adapter_config),
        "simulate": (layout.simulated, layout.simulate_report),
        "update": (layout.embeddings, layout.update_choices),
    }
