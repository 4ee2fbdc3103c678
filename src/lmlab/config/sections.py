"""The config sections: one dataclass per TOML table, every field documented, and the checks.

:class:`Config` is the whole tree; :meth:`Config.validate` and :func:`check_model` raise
:class:`~lmlab.errors.ConfigError` naming the key. Reading and writing TOML lives in
:mod:`lmlab.config.load`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lmlab.data.filters import FILTERS
from lmlab.errors import ConfigError


def opt(
    default: Any, help: str, choices: tuple[str, ...] | None = None, minimum: float | None = None
):
    """A dataclass field with a one-line ``help`` (shown by ``--help`` and the docs)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if minimum is not None:
        meta["minimum"] = minimum
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The network: a decoder-only transformer or one of the baselines."""

    arch: str = opt(
        "transformer",
        "model family (encdec: a frozen pretrained encoder feeding this decoder by cross-attention)",
        choices=("transformer", "bigram", "bow", "one_head", "no_residual", "encdec"),
    )
    vocab_size: int = opt(0, "vocabulary size; 0 takes it from the tokenizer", minimum=0)
    n_layer: int = opt(4, "number of transformer blocks", minimum=1)
    n_head: int = opt(4, "attention heads per block", minimum=1)
    n_kv_head: int = opt(
        0, "key/value heads for grouped-query attention; 0 means n_head", minimum=0
    )
    d_model: int = opt(128, "residual stream width", minimum=1)
    d_ff: int = opt(
        0,
        "MLP hidden width; 0 means 8/3*d_model rounded up to 64 for swiglu, else 4*d_model",
        minimum=0,
    )
    context_length: int = opt(256, "maximum sequence length in tokens", minimum=1)
    norm: str = opt("rmsnorm", "normalisation layer", choices=("rmsnorm", "layernorm", "none"))
    norm_position: str = opt(
        "pre", "norm before (pre) or after (post) each sublayer", choices=("pre", "post")
    )
    residual: bool = opt(
        True,
        "residual connections around each sublayer; false stacks them plainly (the ladder's no-residual rung, with norms unless model.norm=none)",
    )
    norm_eps: float = opt(1e-5, "epsilon inside the norm", minimum=0.0)
    position: str = opt("rope", "positional scheme", choices=("rope", "learned", "none"))
    rope_theta: float = opt(10000.0, "RoPE base frequency", minimum=1.0)
    mlp: str = opt(
        "swiglu",
        "MLP type (gelu is GPT-2's tanh approximation, gelu_erf the exact form nanoGPT uses, relu2 is relu squared)",
        choices=("swiglu", "gelu", "gelu_erf", "silu", "relu", "relu2"),
    )
    qk_norm: bool = opt(
        False,
        "RMS-normalise each head's queries and keys (a learned gain per dim) before RoPE; "
        "exports as Qwen3",
    )
    bias: bool = opt(False, "biases in linear layers and norms")
    tie_embeddings: bool = opt(True, "share the token embedding with the output head")
    dropout: float = opt(0.0, "dropout probability on attention, MLP and embeddings", minimum=0.0)
    init_std: float = opt(0.02, "standard deviation of the normal weight init", minimum=0.0)
    zero_init_out: bool = opt(
        False, "start each block's output projections (attn.proj, mlp.proj) at zero"
    )
    encoder: str = opt(
        "answerdotai/ModernBERT-base",
        "model.arch=encdec: the frozen encoder, a local Hugging Face folder or (online) a hub name",
    )


@dataclass
class DataConfig:
    """What the trainer reads."""

    path: str = opt("", "a prepared dataset folder (from `lmlab data prepare`)")
    tokenizer: str = opt(
        "", "tokenizer folder; empty takes the one recorded in the dataset's meta.json"
    )
    mix: list[str] = opt(
        [], "extra prepared datasets mixed into each batch, as PATH:FRACTION (replay)"
    )


@dataclass
class OptimConfig:
    """AdamW (or Muon) and the update guards."""

    name: str = opt(
        "adamw",
        "optimizer: adamw, or muon (orthogonalised momentum for hidden matrices, AdamW at train.lr for embeddings, head, norms, biases)",
        choices=("adamw", "muon"),
    )
    muon_lr: float = opt(
        0.02,
        "muon: peak learning rate of the hidden matrices (follows train.lr's schedule)",
        minimum=0.0,
    )
    muon_momentum: float = opt(0.95, "muon: momentum (Nesterov)", minimum=0.0)
    muon_ns_steps: int = opt(5, "muon: Newton-Schulz iterations", minimum=1)
    weight_decay: float = opt(0.1, "AdamW weight decay, applied to matrices only", minimum=0.0)
    beta1: float = opt(0.9, "AdamW beta1", minimum=0.0)
    beta2: float = opt(0.95, "AdamW beta2", minimum=0.0)
    eps: float = opt(1e-8, "AdamW epsilon", minimum=0.0)
    grad_clip: float = opt(1.0, "clip the global gradient norm to this; 0 disables", minimum=0.0)
    spike_factor: float = opt(
        0.0,
        "skip an update whose grad norm exceeds this times the running median; 0 disables",
        minimum=0.0,
    )
    spike_window: int = opt(
        50, "how many recent grad norms the spike guard's median looks at", minimum=1
    )


@dataclass
class TrainConfig:
    """The training loop."""

    max_steps: int = opt(1000, "optimizer steps to run", minimum=0)
    batch_size: int = opt(32, "sequences per optimizer step (the global batch)", minimum=1)
    batch_tokens: int = opt(
        0, "global batch in tokens; when set it overrides batch_size", minimum=0
    )
    micro_batch_size: int = opt(
        0,
        "sequences per forward pass; 0 means the largest that fits (probed on CUDA; the whole per-process batch on CPU)",
        minimum=0,
    )
    lr: float = opt(3e-4, "peak learning rate", minimum=0.0)
    min_lr: float = opt(3e-5, "learning rate at the end of the decay", minimum=0.0)
    warmup_steps: int = opt(100, "linear warmup steps", minimum=0)
    lr_schedule: str = opt(
        "cosine", "decay after warmup", choices=("cosine", "constant", "wsd", "linear")
    )
    decay_fraction: float = opt(
        0.2, "wsd: fraction of max_steps spent in the final decay", minimum=0.0
    )
    eval_every: int = opt(100, "evaluate every N steps; 0 only at the end", minimum=0)
    checkpoint_every: int = opt(500, "checkpoint every N steps; 0 only at the end", minimum=0)
    keep_checkpoints: int = opt(
        2, "keep the newest N checkpoints (the best is always kept too)", minimum=1
    )
    patience: int = opt(
        0, "stop when val loss has not improved for this many evals; 0 disables", minimum=0
    )
    min_delta: float = opt(
        0.0, "an improvement smaller than this does not count for patience", minimum=0.0
    )
    max_minutes: float = opt(
        0.0, "stop (and checkpoint) after this much wall time; 0 disables", minimum=0.0
    )
    fit_to_time: bool = opt(
        False,
        "with max_minutes: at each eval, refit max_steps to the pace since the last one, so the schedule ends when the time does",
    )
    seed: int = opt(1337, "seed for init, batches and dropout")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = opt(
        "auto", "compute precision", choices=("auto", "float32", "bfloat16", "float16")
    )
    compile: bool = opt(False, "wrap the model in torch.compile")
    compile_mode: str = opt(
        "default",
        "torch.compile mode when train.compile is on",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    fused_loss: bool = opt(
        True,
        "compute the output layer and cross-entropy together in chunks, never holding the full logits (transformer, vocabularies of 1024+)",
    )
    log_every: int = opt(10, "print a step line every N steps", minimum=1)
    out: str = opt("runs/run", "the run folder")
    init_from: str = opt("", "start from this run or checkpoint's weights (fine-tuning)")
    parallel: str = opt(
        "ddp",
        "under torchrun: ddp replicates the model, fsdp shards parameters, gradients and optimizer state (FSDP2)",
        choices=("ddp", "fsdp"),
    )
    activation_checkpointing: bool = opt(
        False,
        "recompute each block's activations in the backward pass (less memory, about a third more compute)",
    )


@dataclass
class EvalConfig:
    """Evaluation during and after training."""

    batches: int = opt(20, "batches of val data per evaluation; 0 means the whole split", minimum=0)
    batch_size: int = opt(
        0, "sequences per eval batch; 0 means train.micro_batch_size or train.batch_size", minimum=0
    )
    context_length: int = opt(
        0,
        "tokens per val window; 0 means model.context_length (a shorter one scores models of "
        "different contexts on the same windows)",
        minimum=0,
    )
    samples: int = opt(2, "samples written to samples.md at each eval", minimum=0)
    sample_tokens: int = opt(128, "tokens per sample written at each eval", minimum=1)
    syntax_samples: int = opt(
        0, "completions for the syntax pass rate in the final report; 0 skips it", minimum=0
    )


@dataclass
class SampleConfig:
    """Text generation defaults."""

    prompt: str = opt("", "prompt text; empty starts from end-of-text")
    num_samples: int = opt(1, "how many samples", minimum=1)
    max_new_tokens: int = opt(200, "tokens to generate per sample", minimum=1)
    temperature: float = opt(0.8, "softmax temperature; 0 is greedy", minimum=0.0)
    top_k: int = opt(0, "keep only the k most likely tokens; 0 disables", minimum=0)
    top_p: float = opt(1.0, "nucleus sampling mass; 1 disables", minimum=0.0)
    repetition_penalty: float = opt(
        1.0, "divide logits of tokens already seen by this; 1 disables", minimum=0.0
    )
    seed: int = opt(0, "sampling seed")


@dataclass
class LogConfig:
    """Where progress goes."""

    progress: bool = opt(True, "show a progress bar")
    tensorboard: bool = opt(False, "also write TensorBoard event files into the run folder")
    wandb_project: str = opt("", "also log to this Weights & Biases project")


@dataclass
class TokenizerConfig:
    """The tokenizer stage of a recipe (`lmlab run`)."""

    kind: str = opt("bpe", "tokenizer type", choices=("bpe", "char", "symbolic"))
    input: list[str] = opt(
        [], "files, folders or globs to train on (@stdlib: this Python's standard library)"
    )
    exclude: list[str] = opt(
        [], "leave out input files matching one of these globs (as prepare.exclude)"
    )
    filter: str = opt(
        "none",
        "quality filter for the training files (as prepare.filter: code trains on the files it keeps)",
        choices=FILTERS,
    )
    vocab_size: int = opt(8192, "target vocabulary size", minimum=1)
    special_tokens: list[str] = opt(["<|endoftext|>"], "special tokens, never split or merged")
    out: str = opt("", "tokenizer folder; empty skips this stage")
    path: str = opt(
        "", "use an existing tokenizer (folder, tokenizer.json or GPT-2 files) instead of training"
    )


@dataclass
class PrepareConfig:
    """The data preparation stage of a recipe (`lmlab run`)."""

    input: list[str] = opt(
        [],
        "files, folders or globs (@stdlib: this Python's standard library), or datasets streamed: hf:NAME[:CONFIG][#SPLIT], a save_to_disk folder",
    )
    out: str = opt("", "dataset folder; empty skips this stage")
    filter: str = opt("none", "quality filter", choices=FILTERS)
    format: str = opt("auto", "input format", choices=("auto", "text", "jsonl", "parquet"))
    text_field: str = opt("text", "JSONL/parquet field or dataset column holding the document")
    separator: str = opt(
        "", "split text files into documents on this string; empty keeps one document per file"
    )
    val_fraction: float = opt(0.05, "fraction of documents held out for validation", minimum=0.0)
    split: str = opt(
        "hash",
        "how val is chosen: hash (documents by a hash of their content) or tail (the last val_fraction of the token stream, as nanoGPT and char-rnn split)",
        choices=("hash", "tail"),
    )
    workers: int = opt(0, "worker processes; 0 means all cores", minimum=0)
    seed: int = opt(0, "seed for the train/val split")
    errors: str = opt(
        "skip",
        "files that are not UTF-8: skip them or decode with replacement",
        choices=("skip", "replace"),
    )
    suffixes: list[str] = opt(
        [], "when a folder is given, only files ending in these (empty: .py for code, else all)"
    )
    exclude: list[str] = opt(
        [],
        "leave out input files matching one of these globs, matched on the path below the input folder with a leading / ('*' crosses folders): '*/tests/*', '*/test_*.py'",
    )
    max_docs: int = opt(
        0, "use only the first N documents of the input (before filtering); 0: all", minimum=0
    )
    max_bytes: int = opt(
        0,
        "use only the first documents whose UTF-8 text adds up to at most this many bytes; 0: all",
        minimum=0,
    )


@dataclass
class SftConfig:
    """Instruction fine-tuning (`lmlab sft`): data, prompt template, held-out split, replay."""

    data: list[str] = opt(
        [],
        "instruction data: JSON/JSONL files, folders or globs (Alpaca instruction/input/output or MBPP text/code records) or hf:NAME; a #SPLIT suffix keeps an MBPP split (train|validation|test|prompt) or names the hub split",
    )
    val_data: list[str] = opt(
        [], "held-out instruction data (same forms); empty holds out sft.val_fraction of sft.data"
    )
    val_fraction: float = opt(
        0.05, "fraction of the training examples held out when sft.val_data is empty", minimum=0.0
    )
    mine: list[str] = opt(
        [],
        "mine documented functions of these files/folders (@stdlib) into RUN/mined.jsonl and train on them too",
    )
    max_examples: int = opt(
        0, "train on at most this many examples (a fixed random subset); 0 uses all", minimum=0
    )
    template: str = opt(
        "",
        "prompt template: alpaca, or a format string with {instruction} and optionally {input}; empty means alpaca",
    )
    mbpp_tests: bool = opt(
        True,
        "MBPP records: append the test_list asserts to the prompt, as the original MBPP prompt does",
    )
    epochs: float = opt(
        0.0, "passes over the training examples; > 0 sets train.max_steps from it", minimum=0.0
    )
    replay_fraction: float = opt(
        0.0,
        "fraction of each batch's rows drawn from pretraining data (data.path, else the base run's dataset)",
        minimum=0.0,
    )
    on_error: str = opt(
        "skip",
        "malformed or unusable records: skip and count them, or stop at the first",
        choices=("skip", "error"),
    )


@dataclass
class EncDecConfig:
    """Encoder-decoder training (``model.arch = "encdec"``): source/target pairs and the parse-rate check."""

    data: list[str] = opt(
        [],
        "JSONL pairs: {source, target} records (or MBPP text/code); a #SPLIT suffix keeps an MBPP split",
    )
    val_data: list[str] = opt(
        [], "held-out pairs (same forms); empty holds out encdec.val_fraction of encdec.data"
    )
    val_fraction: float = opt(
        0.1, "fraction of the pairs held out when encdec.val_data is empty", minimum=0.0
    )
    max_source_tokens: int = opt(
        256, "encoder input is cut to this many of its own tokens", minimum=1
    )
    parse_samples: int = opt(
        16,
        "greedy outputs from held-out sources checked with compile() after training; 0 skips",
        minimum=0,
    )
    max_new_tokens: int = opt(
        0, "tokens per parse-rate output; 0 means model.context_length", minimum=0
    )


# Phase fields that take the [train] value when left at their "inherit" default.
PHASE_INHERITED = ("max_steps", "lr", "min_lr", "warmup_steps", "lr_schedule", "patience")


@dataclass
class PhaseConfig:
    """One phase of a curriculum (a ``[[phase]]`` table; see lmlab.pipeline.curriculum)."""

    name: str = opt("", "phase name (empty: phase_N)")
    data: str = opt("", "a prepared dataset folder; empty prepares one from phase input")
    input: list[str] = opt([], "files, folders or globs to prepare (@stdlib, @stdlib/SUBPATH)")
    transform: str = opt(
        "none",
        "what is done to the input before tokenizing",
        choices=("none", "scramble", "instructions"),
    )
    filter: str = opt("none", "quality filter for the prepared data", choices=FILTERS)
    out: str = opt("", "folder for the phase's prepared dataset; empty: TRAIN_OUT/data/phase_N")
    max_steps: int = opt(-1, "optimizer steps of this phase; -1 takes train.max_steps", minimum=-1)
    lr: float = opt(-1.0, "peak learning rate; -1 takes train.lr", minimum=-1.0)
    min_lr: float = opt(
        -1.0, "learning rate at the end of the decay; -1 takes train.min_lr", minimum=-1.0
    )
    warmup_steps: int = opt(-1, "linear warmup steps; -1 takes train.warmup_steps", minimum=-1)
    lr_schedule: str = opt(
        "",
        "decay after warmup; empty takes train.lr_schedule",
        choices=("", "cosine", "constant", "wsd", "linear"),
    )
    patience: int = opt(-1, "early stopping patience in evals; -1 takes train.patience", minimum=-1)
    replay: float = opt(
        0.0,
        "fraction of each batch's rows drawn from earlier phases' datasets (split evenly)",
        minimum=0.0,
    )


@dataclass
class Config:
    """The whole tree. Section names are the TOML tables; ``phase`` is the ``[[phase]]`` array."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    encdec: EncDecConfig = field(default_factory=EncDecConfig)
    phase: list[PhaseConfig] = field(
        default_factory=list, metadata={"help": "curriculum phases ([[phase]] tables)"}
    )

    def validate(self) -> Config:
        """Check every value and the cross-field rules; raise ConfigError naming the key."""
        for section in dataclasses.fields(self):
            obj = getattr(self, section.name)
            if isinstance(obj, list):  # [[phase]]: keys are phase.N.name, N from 1
                for i, item in enumerate(obj, 1):
                    for f in dataclasses.fields(item):
                        _check_field(f"{section.name}.{i}.{f.name}", f, getattr(item, f.name))
                continue
            for f in dataclasses.fields(obj):
                _check_field(f"{section.name}.{f.name}", f, getattr(obj, f.name))
        for i, ph in enumerate(self.phase, 1):
            if not 0.0 <= ph.replay < 1.0:
                raise ConfigError(f"phase.{i}.replay: must be in [0, 1), got {ph.replay}")
            if ph.replay and i == 1:
                raise ConfigError("phase.1.replay: the first phase has no earlier phase to replay")
            if not ph.data and not ph.input:
                raise ConfigError(
                    f"phase.{i}: give data (a prepared dataset) or input (files to prepare)"
                )
        check_model(self.model)
        t = self.train
        if t.min_lr > t.lr:
            raise ConfigError(f"train.min_lr: {t.min_lr} is above train.lr={t.lr}")
        if t.fit_to_time and not t.max_minutes:
            raise ConfigError("train.fit_to_time: needs train.max_minutes, the time to fit to")
        if t.micro_batch_size and t.batch_tokens == 0 and t.batch_size % t.micro_batch_size:
            raise ConfigError(
                f"train.micro_batch_size: {t.micro_batch_size} does not divide train.batch_size={t.batch_size}"
            )
        if self.eval.context_length > self.model.context_length:
            raise ConfigError(
                f"eval.context_length: {self.eval.context_length} is above model.context_length={self.model.context_length}"
            )
        if not 0.0 <= self.sample.top_p <= 1.0:
            raise ConfigError(f"sample.top_p: must be in [0, 1], got {self.sample.top_p}")
        if not 0.0 <= self.prepare.val_fraction < 1.0:
            raise ConfigError(
                f"prepare.val_fraction: must be in [0, 1), got {self.prepare.val_fraction}"
            )
        for key in ("val_fraction", "replay_fraction"):
            if not 0.0 <= getattr(self.sft, key) < 1.0:
                raise ConfigError(f"sft.{key}: must be in [0, 1), got {getattr(self.sft, key)}")
        if not 0.0 <= self.encdec.val_fraction < 1.0:
            raise ConfigError(
                f"encdec.val_fraction: must be in [0, 1), got {self.encdec.val_fraction}"
            )
        return self

    def batch_shape(self, world: int = 1) -> tuple[int, int]:
        """(global batch in sequences, micro-batch per process) for ``world`` processes."""
        t = self.train
        T = self.model.context_length
        per_proc_unit = (t.micro_batch_size or 1) * world
        if t.batch_tokens:
            # round the token budget to whole sequences, then up to a multiple of micro x world
            B = max(1, round(t.batch_tokens / T))
            B = math.ceil(B / per_proc_unit) * per_proc_unit
        else:
            B = t.batch_size
            if B % world:
                raise ConfigError(
                    f"train.batch_size: {B} is not divisible by the {world} processes"
                )
            if t.micro_batch_size and (B // world) % t.micro_batch_size:
                raise ConfigError(
                    f"train.micro_batch_size: {t.micro_batch_size} does not divide the per-process batch {B // world}"
                )
        micro = t.micro_batch_size or B // world
        return B, micro

    @property
    def eval_batch_size(self) -> int:
        """Sequences per eval batch: eval.batch_size, else the micro-batch, else the global batch.

        It does not depend on the process count, so val windows (and losses) are comparable.
        """
        return self.eval.batch_size or self.train.micro_batch_size or self.batch_shape(1)[0]

    @property
    def eval_context_length(self) -> int:
        """Tokens per val window: eval.context_length, else the model's context."""
        return self.eval.context_length or self.model.context_length


def check_model(m: ModelConfig) -> None:
    """The architecture rules (head sizes, grouped heads, rope, dropout, residual): ConfigError naming
    the key. Their one home: :meth:`Config.validate` and ``build_model`` call it, the model classes
    trust the config they get."""
    if m.arch in ("transformer", "no_residual", "encdec"):
        if m.d_model % m.n_head:
            raise ConfigError(
                f"model.d_model: {m.d_model} is not divisible by model.n_head={m.n_head}"
            )
        kv = m.n_kv_head or m.n_head
        if m.n_head % kv:
            raise ConfigError(f"model.n_kv_head: {kv} does not divide model.n_head={m.n_head}")
        if m.position == "rope" and (m.d_model // m.n_head) % 2:
            raise ConfigError(
                f"model.position: rope needs an even head size, got {m.d_model // m.n_head}"
            )
    if (
        m.arch == "one_head" and m.position == "rope" and m.d_model % 2
    ):  # its one head is d_model wide
        raise ConfigError(f"model.position: rope needs an even head size, got d_model={m.d_model}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if not m.residual and m.arch != "transformer":
        raise ConfigError(
            f"model.residual: false is a switch of model.arch=transformer, not {m.arch}"
        )


def resolve_vocab_size(m: ModelConfig, data_vocab_size: int) -> ModelConfig:
    """``model.vocab_size = 0`` filled from the data's tokenizer (in place): the one step every
    command that trains takes; a size given below the data's raises ConfigError."""
    data_vocab_size = int(data_vocab_size)
    if m.vocab_size == 0:
        m.vocab_size = data_vocab_size
    elif m.vocab_size < data_vocab_size:
        raise ConfigError(
            f"model.vocab_size: {m.vocab_size} is below the dataset's vocab_size {data_vocab_size}"
        )
    return m


def _check_field(key: str, f: dataclasses.Field, value: Any) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: expected one of {'|'.join(choices)}, got {value!r}")
    minimum = f.metadata.get("minimum")
    if minimum is not None and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")


def check_section(obj: Any, prefix: str) -> None:
    """Check one section built outside a Config (e.g. from command-line flags): ConfigError naming ``prefix.key``."""
    for f in dataclasses.fields(obj):
        _check_field(f"{prefix}.{f.name}", f, getattr(obj, f.name))
