"""Every hyper-parameter mapping of the settings, as the dataclass whose fields it may set.

A mapping setting (``filter.onepass``, ``refiner.lora``, ``baseline.params.<method>``...) is checked
against its dataclass when a config loads and filled from it when a component is built. They live
here, apart from the models that use them and importing nothing but ``dataclasses``, so the settings
module reads them directly (as PEFT keeps a ``LoraConfig`` apart from the layers it configures).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainParams:
    """Hyper-parameters every trained method has."""

    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    reg: float = field(default=1e-4, metadata={"help": "L2 weight on the trained parameters."})
    batch_size: int = field(default=1024, metadata={"help": "Triples per step."})
    epochs: int = field(default=30, metadata={"help": "Maximum epochs."})
    # the cold-validation curve of a title-content student wobbles by a few 1e-3 from epoch to
    # epoch; with three epochs of patience a slowly rising run (lower learning rates) stops on a dip
    patience: int = field(default=5, metadata={"help": "Epochs without a better cold-val score."})
    hidden: int = field(default=200, metadata={"help": "Width of the hidden layers."})


@dataclass
class RandomParams:
    seed: int = field(default=0, metadata={"help": "Seed of the random embeddings."})


@dataclass
class KNNParams:
    k: int = field(default=20, metadata={"help": "Warm neighbours per cold item."})
    temperature: float = field(
        default=0.0, metadata={"help": "0: plain mean; > 0: softmax(cosine / temperature) weights."}
    )
    batch: int = field(default=1024, metadata={"help": "Cold items per similarity block."})


@dataclass
class DropoutNetParams(TrainParams):
    dropout: float = field(default=0.5, metadata={"help": "Chance of zeroing an item's preference input."})
    layers: int = field(default=2, metadata={"help": "Hidden Linear+BatchNorm+tanh layers per tower."})
    out_dim: int = field(default=0, metadata={"help": "Tower output width; 0: the backbone's dimension."})


@dataclass
class MetaEmbParams(TrainParams):
    a_weight: float = field(default=0.5, metadata={"help": "alpha: weight of cold loss a; b gets 1 - alpha."})
    inner_lr: float = field(default=0.1, metadata={"help": "Step size of the simulated warm-up update."})
    init_scale: float = field(default=0.1, metadata={"help": "Factor on the generator's initial weights."})
    layers: int = field(default=0, metadata={"help": "Hidden tanh layers of width `hidden` (0: linear)."})


@dataclass
class MTPRParams(TrainParams):
    hidden: int = field(default=200, metadata={"help": "Width of the content part W c of an item."})
    init_std: float = field(default=0.01, metadata={"help": "Std of the users' initial content-part noise."})


@dataclass
class CLCRecParams(TrainParams):
    tau: float = field(default=0.2, metadata={"help": "Temperature of both contrastive losses."})
    lam: float = field(default=0.5, metadata={"help": "Weight of the user-item loss; 1 - lam on item-content."})
    replace: float = field(default=0.5, metadata={"help": "Share of item ID embeddings replaced by content."})
    n_neg: int = field(default=128, metadata={"help": "Sampled warm negatives per positive."})


@dataclass
class GARParams(TrainParams):
    alpha: float = field(default=0.1, metadata={"help": "Weight of the generator's L1 pull to the real item."})
    beta: float = field(default=0.9, metadata={"help": "Share of the sampled negative (vs generated) in the recommender."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout in the recommender's towers."})
    gen_dropout: float = field(default=0.1, metadata={"help": "Dropout in the generator."})
    reg: float = field(default=1e-3, metadata={"help": "Weight decay of both players."})


@dataclass
class ALDIParams(TrainParams):
    alpha: float = field(default=0.9, metadata={"help": "Ranking-distillation weight."})
    beta: float = field(default=0.05, metadata={"help": "Identification-distillation weight."})
    gamma: float = field(default=0.1, metadata={"help": "Rating-distillation weight."})
    freq_weight: bool = field(default=True, metadata={"help": "Weight distillation by item frequency."})
    max_weight: float = field(default=4.0, metadata={"help": "M of the frequency weight tanh(M f / mean f)."})


@dataclass
class LMTowerParams(TrainParams):
    out_dim: int = field(default=64, metadata={"help": "Output width of each MLP."})
    hidden: int = field(default=256, metadata={"help": "Hidden width of each MLP."})
    epochs: int = field(default=20, metadata={"help": "Maximum epochs."})


@dataclass
class OnePassParams(TrainParams):
    hidden: int = field(default=256, metadata={"help": "Hidden width of the text MLP."})
    align: float = field(default=1.0, metadata={"help": "Weight of the alignment loss (mapped text to the "
                                                        "item's behaviour embedding)."})
    epochs: int = field(default=20, metadata={"help": "Maximum epochs."})
    encoder: str = field(default="vectors", metadata={
        "help": "vectors: the frozen text vectors of filter.text_model (only the MLP and head learn) | text: the "
                "item text through a language model (text_model) that is tuned with the head (tune)."})
    text_model: str = field(default="", metadata={
        "help": "encoder=text: a causal LM (smollm2-135m, a local folder) or minilm; '' is filter.text_model."})
    tune: str = field(default="lora", metadata={
        "help": "encoder=text: lora (adapters on the LM learn) | frozen (the LM's pooled states, fixed) | full "
                "(every weight learns: for the small MiniLM)."})
    pooling: str = field(default="mean", metadata={"help": "encoder=text: mean of the last hidden states, or "
                                                            "last (the last token's state)."})
    lora_r: int = field(default=8, metadata={"help": "encoder=text, tune=lora: adapter rank."})
    lora_targets: list[str] = field(default_factory=list, metadata={
        "help": "encoder=text, tune=lora: the layers that get adapters ([]: the attention's query and value "
                "projections; add embed_tokens to let the model learn what words it never saw mean)."})
    text_lr: float = field(default=1e-4, metadata={"help": "encoder=text: learning rate of the text encoder."})
    batch_items: int = field(default=32, metadata={"help": "encoder=text, or batching=items: items per step (each "
                                                           "with all its training users as targets)."})
    batching: str = field(default="pairs", metadata={
        "help": "encoder=vectors: pairs (batch_size (item, user) pairs per step; an item with many users is scored "
                "once per pair) | items (batch_items warm items per step, each scored once against every user with "
                "all its training users as targets: the same loss as the text path, ~10x fewer logits per epoch)."})
    max_length: int = field(default=64, metadata={"help": "encoder=text: tokens kept of an item's text."})
    degree_penalty: float = field(default=0.0, metadata={
        "help": "Lower each user's score for every item by this many standard deviations of the head's scores "
                "times log(1 + the user's training interactions), when the top-K users are chosen: heavy users "
                "fill fewer lists and light ones, whose few held-out items weigh more in a per-user Recall, more "
                "(0: the head's scores as they are). It goes into the head's bias, so the service chooses alike."})
    standardize: bool = field(default=False, metadata={
        "help": "encoder=text: centre and scale the pooled states per dimension by the catalogue's statistics "
                "(taken before training, saved with the encoder): a causal LM's states share a few huge "
                "dimensions, so without it unrelated titles sit at cosine ~.95."})
    lora_layers: int = field(default=0, metadata={
        "help": "encoder=text, tune=lora on a causal LM: adapters on the top n decoder layers only (0: every layer). "
                "The frozen layers below read each text once before the first epoch and every epoch starts from "
                "their states, so an epoch costs the top n layers' share of the model."})


@dataclass
class LoraParams:
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "Linear layers that get adapters."})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate."})
    epochs: int = field(default=1, metadata={"help": "Passes over the fine-tuning set."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per step."})
    seed: int = field(default=0, metadata={"help": "Seed of the adapter init and the batch order."})


@dataclass
class PromptTemplate:
    instruction: str = field(
        default="You are a recommender system for scientific papers. From the papers a user has saved, "
        "judge whether the user will also save the candidate paper. Answer Yes or No.",
        metadata={"help": "First line of every prompt (it carries the question, so it is in the prefix)."},
    )
    history_header: str = field(default="Papers the user saved:", metadata={"help": "Heads the history."})
    history_item: str = field(default="- {title}", metadata={"help": "One history line; {title} is filled."})
    candidate_lead: str = field(
        default="",
        metadata={"help": "Ends the prefix and leads into every candidate (e.g. 'Candidate paper: '): paid once "
                          "per user, where the same words in `candidate` are paid once per pair."},
    )
    candidate: str = field(default="Candidate paper: {title}", metadata={"help": "The candidate line."})
    question: str = field(
        default="Answer:",
        metadata={"help": "Ends the prompt on its own line; the next token is the answer. Paid per pair: '' ends "
                          "the prompt at the candidate, the question being the instruction's."},
    )
    yes: str = field(default=" Yes", metadata={"help": "Answer text for a positive (with its leading space)."})
    no: str = field(default=" No", metadata={"help": "Answer text for a negative."})
    max_history: int = field(default=20, metadata={"help": "History titles shown (N)."})
    history: str = field(default="sample", metadata={
        "help": "Which N of the user's training items the prompt shows: sample (a seeded sample, one prefix per "
                "user, shared by all its candidates) | similar (the N closest in content to the candidate, the "
                "paper's construction: one prefix per pair, so judging costs more)."})
    max_title_chars: int = field(default=400, metadata={"help": "Characters kept before tokenising (huge texts)."})
    max_title_tokens: int = field(default=48, metadata={"help": "Tokens kept of each title in a prompt."})



# ``baseline.params``: each content-mapping method's hyper-parameters, by method name
METHOD_PARAMS: dict[str, type] = {
    "random": RandomParams, "knn": KNNParams, "deepmusic": TrainParams, "dropoutnet": DropoutNetParams,
    "metaemb": MetaEmbParams, "mtpr": MTPRParams, "clcrec": CLCRecParams, "gar": GARParams, "aldi": ALDIParams,
}
