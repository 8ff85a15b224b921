"""GAR (Chen et al., SIGIR 2022): a generative adversarial framework for cold-start items.

Regressing behaviour embeddings from content (DeepMusic) gives cold embeddings whose distribution
differs from the warm ones', so a recommender trained on warm embeddings ranks cold items badly.
GAR trains the content generator and the recommender against each other instead:

* the generator maps content to a (fake) item embedding in the backbone's space
  (content -> hidden -> BatchNorm -> tanh -> d);
* the recommender (the adversary) has a user tower and an item tower (BatchNorm, tanh, dropout)
  over backbone embeddings, scoring by the dot product of their outputs. Its step learns to rank
  the real positive above the generated one and the negative:
  -log sigmoid(s(u, i+) - (1 - beta) s(u, gen(i+)) - beta s(u, i-));
* the generator's step makes the recommender score its embedding above the real one, plus a
  small L1 pull towards the real embedding:
  (1 - alpha) (-log sigmoid(s(u, gen(i+)) - s(u, i+))) + alpha |gen(i+) - i+|.

The two steps alternate on every batch, each with its own Adam. When neither can win, generated
embeddings are ranked like real ones by a recommender trained on warm data. At inference all items
go through the item tower (warm: backbone embedding, cold: generated) and users through the user
tower, so warm scores change too: ``keeps_warm`` is false. The towers are residual (see ``Tower``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import Scorer
from .base import ColdStartMethod, FitContext, TrainParams, fit_with_early_stopping, register


@dataclass
class GARParams(TrainParams):
    alpha: float = field(default=0.05, metadata={"help": "Weight of the generator's L1 pull to the real item."})
    beta: float = field(default=0.1, metadata={"help": "Share of the negative (vs generated) in the recommender."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout in the recommender's towers."})


class Tower(nn.Module):
    """x + MLP(x), the MLP's last layer starting at zero: the recommender starts as the backbone's
    own scorer, a ranker from the first batch, and the adversarial game refines it. (From random
    towers the recommender learns to rank only from the small beta share of its loss, while the
    real-versus-generated share teaches it to spot generated vectors, not preferences.)"""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        # the input BatchNorm puts backbone embeddings of any scale on one footing
        self.mlp = nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.Tanh(),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


@register("gar")
class GAR(ColdStartMethod):
    Params = GARParams
    keeps_warm = False

    def fit(self, ctx: FitContext) -> "GAR":
        p = self.params
        torch.manual_seed(ctx.seed)  # initial weights from the run's seed, whatever ran before
        dim = ctx.item_emb.shape[1]
        # BatchNorm before the tanh keeps it out of its flat (or linear) range whatever the scale
        # of the content vectors (L2-normalised text vectors have tiny coordinates)
        self.generator = nn.Sequential(nn.Linear(ctx.content.shape[1], p.hidden), nn.BatchNorm1d(p.hidden),
                                       nn.Tanh(), nn.Linear(p.hidden, dim)).to(ctx.device)
        self.user_tower = Tower(dim, p.hidden, p.dropout).to(ctx.device)
        self.item_tower = Tower(dim, p.hidden, p.dropout).to(ctx.device)
        recommender = nn.ModuleDict({"user": self.user_tower, "item": self.item_tower})
        gen_opt = torch.optim.Adam(self.generator.parameters(), lr=p.lr, weight_decay=p.reg)
        rec_opt = torch.optim.Adam(recommender.parameters(), lr=p.lr, weight_decay=p.reg)

        def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            if len(users) < 2:  # BatchNorm needs two rows; a lone leftover triple teaches nothing
                return torch.zeros((), device=ctx.device)
            u, real, negative = ctx.user_emb[users], ctx.item_emb[pos], ctx.item_emb[neg]
            # recommender: the real positive above the generated one (and, a little, the negative)
            s_real, s_fake, s_neg = self._scores(u, real, self.generator(ctx.content[pos]).detach(), negative)
            rec_loss = -F.logsigmoid(s_real - (1 - p.beta) * s_fake - p.beta * s_neg).mean()
            update(rec_opt, rec_loss)
            # generator: fool the just-updated recommender while staying near the real embedding.
            # The recommender judges in inference mode (running BatchNorm statistics, no dropout),
            # as it will score cold items, so the generator cannot game the batch statistics.
            recommender.eval()
            fake = self.generator(ctx.content[pos])
            s_real, s_fake = self._scores(u, real, fake)
            gen_loss = (1 - p.alpha) * -F.logsigmoid(s_fake - s_real).mean() + p.alpha * F.l1_loss(fake, real)
            update(gen_opt, gen_loss)
            recommender.train()
            return (rec_loss + gen_loss).detach()

        modules = nn.ModuleDict({"generator": self.generator, "recommender": recommender})
        fit_with_early_stopping(self, ctx, modules, step, p, optimize=False)
        return self

    def _scores(self, users: torch.Tensor, *items: torch.Tensor) -> list[torch.Tensor]:
        """Recommender scores of each user against each of the item batches (one tower pass)."""
        u = self.user_tower(users)
        outs = self.item_tower(torch.cat(items)).split(len(users))
        return [(u * out).sum(1) for out in outs]

    @torch.no_grad()
    def finish(self, ctx: FitContext) -> None:
        items = ctx.item_emb.clone()
        items[ctx.cold] = self.generator(ctx.content[ctx.cold]).to(items.dtype)
        self.user_out = self.user_tower(ctx.user_emb)
        self.item_out = self.item_tower(items)

    def scorer(self) -> Scorer:
        return lambda users: self.user_out[users] @ self.item_out.T
