"""Judging on Ray Data: the simulation's candidate pairs spread over a pool of judge actors.

The pairs of the shards still missing become a Ray Dataset grouped by shard (a shard holds whole
users, so all of a user's candidates reach the same actor in the same batch and the packed engine
encodes the user's history prefix once). Each actor loads the base model once, folds the LoRA
adapter into its weights (``merge=True``: as fast as the base model, nothing left to train) and runs
the packed ``Judge`` on the batches it is given. The driver writes each shard as soon as all of its
verdicts are back, with the local engine's layout and writer, into the same fingerprinted folder: a
resume under either engine accepts exactly the shards that exist, and a killed actor or driver
loses at most the shards not yet written.

``ray.init()`` starts a local Ray for the stage when none is running; with ``RAY_ADDRESS`` set the
stage joins that cluster instead (every node needs coldllm installed, and the model and adapter
folders at the same absolute paths, e.g. on a shared filesystem; the shards are written by the
driver, so the run folder need not be shared). Ray is imported only here, and only when asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import ConfigError
from ..llm.prompts import PromptTemplate
from .refiner import known_p_yes, plan_shards, read_shards, shard_pairs, shard_path, write_shard

log = logging.getLogger(__name__)


def require_ray():
    """The ray module, or one clear line saying how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate extra of ray)
    except ImportError as err:
        raise ConfigError(f"refiner.engine=ray needs ray[data] (pip install 'coldllm[ray]'): {err}") from None
    return ray


@contextlib.contextmanager
def ray_session(**init_kwargs):
    """A Ray to run on: the one already initialised, the cluster named by ``RAY_ADDRESS``, or a
    local one started here and shut down afterwards."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = "auto" if os.environ.get("RAY_ADDRESS") else None
    # Ray's own start-up notices stay off the terminal; its Data library still warns (see below)
    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, **init_kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


class PairJudge:
    """A Ray Data actor: one model with its adapter merged, judging batches of (user, item) rows.

    Made once per actor (the model load is the expensive part); ``__call__`` gets a pandas batch
    and returns it with ``p_yes``. Any batch is judged correctly; one whose rows hold all of each
    user's candidates judges them in one packed row per user.
    """

    def __init__(self, model_dir: str, adapter_dir: str | None, template: PromptTemplate, titles: np.ndarray,
                 histories: dict[int, np.ndarray], batch_size: int, device: str, threads: int):
        import torch

        from ..llm.judge import Judge
        from ..llm.lora import load_adapter
        from ..llm.models import load_llm
        from ..llm.prompts import PromptEncoder
        from ..utils import quiet_libraries, resolve_device

        quiet_libraries()  # an actor's output is forwarded to the driver's terminal
        torch.set_num_threads(max(1, threads))
        model, tokenizer = load_llm(model_dir, device=resolve_device(device))
        if adapter_dir:
            model = load_adapter(model, Path(adapter_dir), merge=True)
        self.judge = Judge(model, PromptEncoder(tokenizer, template), batch_size)
        self.titles, self.histories = titles, histories

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        prompts, titles = self.judge.prompts, self.titles
        owners, owner = np.unique(batch["user"].to_numpy(), return_inverse=True)
        prefixes = [prompts.prefix([titles[i] for i in self.histories[int(u)]]) for u in owners]
        suffixes = [prompts.suffix(titles[i]) for i in batch["item"].to_numpy()]
        return batch.assign(p_yes=self.judge.p_yes_grouped(prefixes, suffixes, owner))


def actor_resources(ray, actors: int, device: str) -> dict[str, float]:
    """What each actor asks Ray for: a GPU when the judge runs on one; otherwise an equal share of
    the cluster's CPUs (at least one), which is also how many threads its model uses."""
    resources = ray.cluster_resources()
    wants_gpu = device.startswith("cuda") or (device == "auto" and resources.get("GPU", 0) > 0)
    if wants_gpu:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(1, int(resources.get("CPU", 1)) // actors)}


def simulate_on_ray(model_dir: Path, adapter_dir: Path | None, template: PromptTemplate,
                    candidates: pd.DataFrame, histories: list[np.ndarray], titles: np.ndarray, out_dir: Path,
                    threshold: float = 0.5, shard_users: int = 128, known: pd.DataFrame | None = None,
                    actors: int = 1, batch_size: int = 32, device: str = "auto") -> pd.DataFrame:
    """``refiner.simulate`` on a pool of ``actors`` Ray actors: the same shards, the same result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_user, shards = plan_shards(candidates, shard_users)
    missing = [s for s in range(len(shards)) if not shard_path(out_dir, s).exists()]
    if len(missing) < len(shards):
        log.info("resumed: %d of %d shards were already done", len(shards) - len(missing), len(shards))
    # each missing shard's pairs in file order, with the verdicts already known from other runs
    pending: dict[int, pd.DataFrame] = {}
    for s in missing:
        users, items = shard_pairs(by_user, shards[s])
        frame = pd.DataFrame({"user": users, "item": items, "p_yes": known_p_yes(known, users, items)})
        if frame["p_yes"].notna().all():
            write_shard(out_dir, s, users, items, frame["p_yes"].to_numpy())
        else:
            pending[s] = frame
    if pending:
        _judge_pending(pending, model_dir, adapter_dir, template, histories, titles, out_dir,
                       actors, batch_size, device)
    return read_shards(out_dir, len(shards), threshold)


def _judge_pending(pending: dict[int, pd.DataFrame], model_dir: Path, adapter_dir: Path | None,
                   template: PromptTemplate, histories: list[np.ndarray], titles: np.ndarray, out_dir: Path,
                   actors: int, batch_size: int, device: str) -> None:
    # one frame per shard, its rows sorted by user: each becomes one block of the dataset and, with
    # batch_size=None, one batch, so whole users reach an actor together. (``groupby().map_groups``
    # would regroup pairs that are already grouped, with a sort whose tasks wait for the CPUs the
    # actors hold: on a one-CPU Ray it never finishes.)
    blocks = [f[f["p_yes"].isna()][["user", "item"]].assign(shard=s) for s, f in pending.items()]
    expected = {s: len(b) for s, b in zip(pending, blocks)}  # verdicts each shard waits for
    got: dict[int, pd.DataFrame] = {}
    users = np.unique(np.concatenate([b["user"].to_numpy() for b in blocks]))
    with ray_session() as ray:
        # the stage's own bar counts pairs; Ray Data's bars and INFO lines would bury it
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        resources = actor_resources(ray, actors, device)
        # only what the actors read travels (once, with the actor pool's definition): all titles, the
        # histories of the users judged here
        context = {"model_dir": str(Path(model_dir).resolve()),
                   "adapter_dir": str(Path(adapter_dir).resolve()) if adapter_dir else None,
                   "template": template, "titles": np.asarray(titles),
                   "histories": {int(u): np.asarray(histories[u]) for u in users},
                   "batch_size": batch_size, "device": device, "threads": int(resources["num_cpus"])}
        dataset = ray.data.from_pandas(blocks).map_batches(
            PairJudge, batch_size=None, batch_format="pandas", fn_constructor_kwargs=context,
            compute=ray.data.ActorPoolStrategy(size=actors), **resources)
        bar = tqdm(total=sum(expected.values()), desc="simulate (ray)", unit="pair")
        # batches come back in no fixed order and need not align with shards: a shard is written
        # once every one of its pairs has a verdict (counted once, should a retried task repeat one)
        for batch in dataset.iter_batches(batch_format="pandas", batch_size=None):
            for s, part in batch.groupby("shard", sort=False):
                s = int(s)
                if s not in pending:  # written already
                    continue
                got[s] = pd.concat([got.get(s), part]).drop_duplicates(["user", "item"])
                if len(got[s]) == expected[s]:
                    _write_pending(out_dir, s, pending.pop(s), got.pop(s))
            bar.update(len(batch))
        bar.close()
    if pending:  # an engine that lost rows must not leave a shard looking finished
        raise RuntimeError(f"ray engine returned no verdicts for shards {sorted(pending)}")


def _write_pending(out_dir: Path, shard: int, frame: pd.DataFrame, judged: pd.DataFrame) -> None:
    """The shard's frame (file order, known verdicts) completed with the judged ones, then written."""
    p = judged.set_index(["user", "item"])["p_yes"]
    keys = pd.MultiIndex.from_arrays([frame["user"], frame["item"]])
    p_yes = np.array(frame["p_yes"], dtype=np.float32)  # a copy: pandas hands out read-only views
    todo = np.isnan(p_yes)
    p_yes[todo] = p.reindex(keys[todo]).to_numpy(dtype=np.float32)
    write_shard(out_dir, shard, frame["user"].to_numpy(), frame["item"].to_numpy(), p_yes)
