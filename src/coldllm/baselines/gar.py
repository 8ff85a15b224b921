"""GAR (Chen et al., SIGIR 2022): a generative adversarial framework for cold-start items.

Regressing behaviour embeddings from content (DeepMusic) gives cold embeddings whose distribution
differs from the warm ones', so a recommender trained on warm embeddings ranks cold items badly.
GAR trains the content generator and the recommender against each other instead:

* the generator maps content to a (fake) item embedding in the backbone's space
  (content -> hidden -> BatchNorm -> tanh -> dropout -> d);
* the recommender (the adversary) has a user tower and an item tower over backbone embeddings
  (BatchNorm -> hidden -> BatchNorm -> tanh -> dropout -> hidden), scoring by the dot product of
  their outputs. Its step ranks the real positive above a mix of a sampled negative (share beta)
  and the generated embedding of the same item (share 1 - beta):
  -log sigmoid(s(u, i+) - beta s(u, i-) - (1 - beta) s(u, gen(i+)));
* the generator's step makes the recommender score its embedding above the real one, plus an L1
  pull towards the real embedding (summed over dimensions, weight alpha):
  (1 - alpha) (-log sigmoid(s(u, gen(i+)) - s(u, i+))) + alpha ||gen(i+) - i+||_1.

The two steps alternate on every batch, each with its own Adam. The defaults are the reference
implementation's CiteULike run: most of the recommender's loss is ordinary ranking (beta = 0.9),
so it stays a recommender while it learns to tell generated items from real ones; with the shares
swapped it becomes a detector of generated vectors, the game diverges and cold items rank at
chance. At inference all items go through the item tower (warm: backbone embedding, cold:
generated) and users through the user tower, so warm scores change too: ``keeps_warm`` is false.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import Scorer
from ..hparams import GARParams
from ..layers import mlp
from .base import ColdStartMethod, FitContext, fit_with_early_stopping, register


def recommender_loss(s_real: torch.Tensor, s_neg: torch.Tensor, s_fake: torch.Tensor, beta: float) -> torch.Tensor:
    """The real positive above a mix of the sampled negative (share beta) and the generated item."""
    return -F.logsigmoid(s_real - beta * s_neg - (1 - beta) * s_fake).mean()


def generator_loss(s_real: torch.Tensor, s_fake: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """Scored above the real item by the recommender, and near it in L1 (summed over dimensions)."""
    return (1 - alpha) * -F.logsigmoid(s_fake - s_real).mean() + alpha * (fake - real).abs().sum(1).mean()


@register("gar")
class GAR(ColdStartMethod):
    Params = GARParams
    keeps_warm = False

    def fit_model(self, ctx: FitContext) -> None:
        p = self.params
        dim = ctx.item_emb.shape[1]
        # BatchNorm before each tanh keeps it out of its flat (or linear) range whatever the scale
        # of the inputs (L2-normalised text vectors have tiny coordinates, backbone embeddings large
        # ones); the recommender's towers normalise their embedding inputs too
        self.generator = mlp([ctx.content.shape[1], p.hidden, dim], batch_norm=True,
                             dropout=p.gen_dropout).to(ctx.device)
        self.user_tower = mlp([dim, p.hidden, p.hidden], batch_norm=True, dropout=p.dropout,
                              input_norm=True).to(ctx.device)
        self.item_tower = mlp([dim, p.hidden, p.hidden], batch_norm=True, dropout=p.dropout,
                              input_norm=True).to(ctx.device)
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
            # recommender: the real positive above the sampled negative and the generated item
            with torch.no_grad():
                fake = self.generator(ctx.content[pos])
            rec_loss = recommender_loss(*self._scores(u, real, negative, fake), p.beta)
            update(rec_opt, rec_loss)
            # generator: fool the just-updated recommender while staying near the real embedding.
            # The recommender judges in inference mode (running BatchNorm statistics, no dropout),
            # as it will score cold items, so the generator cannot game the batch statistics.
            recommender.eval()
            fake = self.generator(ctx.content[pos])
            s_real, s_fake = self._scores(u, real, fake)
            gen_loss = generator_loss(s_real, s_fake, real, fake, p.alpha)
            update(gen_opt, gen_loss)
            recommender.train()
            return (rec_loss + gen_loss).detach()

        modules = nn.ModuleDict({"generator": self.generator, "recommender": recommender})
        fit_with_early_stopping(self, ctx, modules, step, p, optimize=False)

    def _scores(self, users: torch.Tensor, *items: torch.Tensor) -> list[torch.Tensor]:
        """Recommender scores of each user against each of the item batches (one tower pass, so
        real, negative and generated items share the BatchNorm statistics)."""
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
