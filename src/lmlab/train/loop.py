"""The training loop: one loop for pretraining, fine-tuning and resumed runs, 1 or N processes.

``train(cfg, resume)`` reads a prepared dataset, builds the model, and runs ``train.max_steps``
AdamW steps. Each step:

1. draws this rank's slice of the global batch for step ``s`` (a function of ``(seed, s)``);
2. runs forward/backward over micro-batches (gradient accumulation; DDP syncs only on the
   last one), the loss summed over tokens and divided by the global target count, so any split
   of the same global batch into processes and micro-batches computes the same update;
3. clips the global gradient norm, lets the spike guard veto the update, steps the optimizer;
4. at log steps writes a metrics.jsonl record and a step line; at eval steps evaluates fixed
   val batches, appends samples to samples.md and updates early stopping; at checkpoint steps
   writes ``checkpoints/step_NNNNNN`` (rank 0).

Stopping: ``max_steps``; early stopping (``patience``); ``max_minutes``; a non-finite (or
absurdly large) training loss, which marks the run *diverged* and stops without saving the
broken weights; Ctrl-C/SIGTERM, which saves a checkpoint first and then re-raises
KeyboardInterrupt. ``resume=True`` continues bit-exactly from the run's latest checkpoint:
weights, optimizer, RNG states, data position, guard and early-stop state are all restored.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.config import Config, save_config
from lmlab.device import autocast, peak_flops, resolve_device, resolve_dtype
from lmlab.errors import CheckpointError, ConfigError, DataError, LmlabError
from lmlab.io import atomic_write_text, open_append, write_json
from lmlab.model import forward
from lmlab.runs import check_run_dir, open_run_dir, resolve_run_config
from lmlab.train import checkpoint as ck
from lmlab.train import distributed as dd
from lmlab.train import fsdp
from lmlab.train import memory_fit as mf
from lmlab.train.host_memory import retain_freed_memory
from lmlab.train.optim import build_optimizer, lr_at, set_lr

# A loss this many times ln(vocab_size) (uniform guessing) can only come from a blown-up model.
DIVERGED_LOSS_FACTOR = 100.0
# train.fused_loss applies from this vocabulary size up (bench/RESULTS.md).
FUSED_LOSS_MIN_VOCAB = 1024
# The spike guard needs this many recent norms (or the whole window if smaller) before it acts.
SPIKE_MIN_HISTORY = 10


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports; also written to ``result.json``."""

    run_dir: str
    steps: int
    tokens: int
    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    wall_time_s: float
    diverged: bool
    stop_reason: str  # max_steps | early_stop | time_budget | diverged | interrupted
    skipped_steps: int
    params: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """report.md's "Result" section: a one-row Markdown table of the set fields."""
        from lmlab.report import markdown_table

        return markdown_table(
            [{k: v for k, v in self.as_dict().items() if k != "run_dir" and v is not None}]
        )


class SpikeGuard:
    """Skip an update whose grad norm exceeds ``factor`` x the median of the last ``window``."""

    def __init__(self, factor: float, window: int, history: list[float] | None = None):
        self.factor = factor
        self.history: deque[float] = deque(history or [], maxlen=window)
        self.min_history = min(window, SPIKE_MIN_HISTORY)

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def is_spike(self, norm: float) -> bool:
        """True to skip this update; otherwise the norm joins the history."""
        if len(self.history) >= self.min_history and norm > self.factor * statistics.median(
            self.history
        ):
            return True
        if math.isfinite(norm):
            self.history.append(norm)
        return False


class _StopSignal:
    """SIGINT/SIGTERM set a flag checked between steps (a second Ctrl-C interrupts at once)."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _clip_grads(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global grad norm before clipping (clips in place when ``max_norm`` > 0)."""
    return torch.nn.utils.clip_grad_norm_(
        params, max_norm if max_norm > 0 else math.inf, foreach=True
    )


def _flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token (3 x forward, lmlab.accounting's convention), for MFU."""
    from lmlab.accounting import training_flops_per_token

    if cfg.model.arch == "encdec":  # accounting counts decoder-only models; no MFU here
        return 0.0
    return training_flops_per_token(cfg.model, cfg.model.context_length)


def _load_tokenizer(cfg: Config, meta: dict[str, Any]):
    """The dataset's tokenizer for samples, or None (samples are then skipped)."""
    path = cfg.data.tokenizer or meta.get("tokenizer") or ""
    if not path or not Path(path).exists():
        return None
    try:
        from lmlab.tokenizer import load_tokenizer

        return load_tokenizer(path)
    except (ImportError, LmlabError, OSError):
        return None


def check_dataset_tokenizer(cfg: Config, meta: dict[str, Any]) -> None:
    """DataError when ``data.tokenizer`` is not the tokenizer the dataset was prepared with
    (every sample would decode to garbage): both fingerprints are named."""
    want = meta.get("tokenizer_fingerprint")
    if not cfg.data.tokenizer or not want:
        return
    from lmlab.tokenizer import load_tokenizer

    if not Path(cfg.data.tokenizer).exists():
        raise ConfigError(f"data.tokenizer: {cfg.data.tokenizer} not found")
    got = load_tokenizer(cfg.data.tokenizer).fingerprint()
    if got != want:
        raise DataError(
            f"data.tokenizer: {cfg.data.tokenizer} (fingerprint {got[:12]}) is not the tokenizer "
            f"{cfg.data.path} was prepared with (fingerprint {want[:12]}, {meta.get('tokenizer', '?')})"
        )


@torch.no_grad()
def _samples(
    model: torch.nn.Module,
    tok: Any,
    n: int,
    length: int,
    start_id: int,
    device: torch.device,
    seed: int,
) -> list[str]:
    """``n`` samples of ``length`` tokens at temperature 0.8, from their own RNG (so training's
    random stream, and therefore exact resume, is untouched)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    ctx = model.config.context_length
    idx = torch.full((n, 1), start_id, dtype=torch.long, device=device)
    for _ in range(length):
        logits = model(idx[:, -ctx:])[:, -1, :].float() / 0.8
        nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return [tok.decode(row[1:].tolist()) for row in idx.cpu()]


def train(cfg: Config, resume: bool = False, data: Any = None, force: bool = False) -> TrainResult:
    """Train ``cfg`` into ``cfg.train.out``; see the module docstring.

    ``data`` replaces the prepared dataset as the batch source (fine-tuning): an object with
    ``meta`` (vocab_size, eot_id, tokenizer), ``loader(global_batch, micro, seed, rank, world,
    device)`` returning a BatchLoader-like object (``get``, ``accum_steps``, ``step``,
    ``state_dict``/``load_state_dict``, ``tokens_per_step``, and ``counts(step)`` -> the
    global batch's (tokens, unmasked targets)), and ``val_batches(batch_size, max_batches,
    seed, rank, world)`` returning this rank's fixed ``(x, y)`` val batches or None. ``x`` is
    token ids, or a dict of the model's keyword inputs (the encoder-decoder's ``idx``,
    ``enc_ids``, ``enc_mask``); an optional ``samples(model, tokenizer, n, max_new_tokens,
    device)`` writes samples.md's texts instead of unconditional ones. See
    :class:`lmlab.data.sft.SftData` and :class:`lmlab.data.pairs.PairData`.

    A run folder that already holds a run is continued only with ``resume`` and started over
    only with ``force`` (:func:`lmlab.runs.open_run_dir`).
    """
    info = dd.from_env()
    device = resolve_device(cfg.train.device, info.local_rank if info.enabled else None)
    if device.type == "cpu":  # reuse freed activations without page faults (host_memory)
        retain_freed_memory()
    # FSDP shards even over one process under torchrun (bench/gpu/check.sh runs it on one GPU)
    dd.setup(info, device, force=cfg.train.parallel == "fsdp" and dd.under_torchrun())
    try:
        result = _Trainer(copy.deepcopy(cfg), info, device, resume, data, force).run()
        # leave together: with gloo, a rank that tears down while rank 0 is still writing the
        # report can abort ("terminate called without an active exception")
        dd.barrier(info)
        return result
    finally:
        dd.teardown()


class _Trainer:
    def __init__(
        self,
        cfg: Config,
        info: dd.Dist,
        device: torch.device,
        resume: bool,
        data: Any = None,
        force: bool = False,
    ):
        from lmlab.data.loader import (
            BatchLoader,
            TokenSplit,
            as_batches,
            contiguous_windows,
            fixed_windows,
            parse_mix,
        )
        from lmlab.data.shards import read_meta
        from lmlab.model import build_model

        self.cfg, self.info, self.device = cfg, info, device
        t, m = cfg.train, cfg.model
        self.t0 = time.monotonic()
        self.data = data  # another batch source (SFT), else the prepared dataset at data.path
        if data is not None:
            meta = data.meta
        elif not cfg.data.path:
            raise ConfigError("data.path: no dataset given (a folder from `lmlab data prepare`)")
        else:
            meta = read_meta(cfg.data.path)
        self.meta = meta
        self.run_dir = Path(t.out)  # as given (messages); config.toml records it absolute
        self.resume_requested, self.force = resume, force
        self.hf_init = (
            None  # train.init_from = "hf:...": its config is the model (lmlab.export.hf_import)
        )
        if t.init_from.startswith("hf:"):
            from lmlab.export.hf_import import start_from_hf

            self.hf_init, changed = start_from_hf(cfg, meta)
            self._say(
                f"model config taken from {t.init_from}"
                + (
                    f" ({len(changed)} key(s) differed from the config's "
                    f"[model]: {', '.join(c.split(':')[0] for c in changed)})"
                    if changed
                    else ""
                )
            )
        if data is None:
            check_dataset_tokenizer(cfg, meta)
        resolve_run_config(
            cfg, meta
        )  # what config.toml holds: vocab size filled in, paths absolute
        self.ckpt_root = self.run_dir / "checkpoints"

        if info.is_main:  # a refusal before any model is built or measured
            check_run_dir(self.run_dir, resume=resume, force=force)

        # 1) where we start: a checkpoint of this run, or fresh
        self.resume_from: Path | None = None
        if resume:
            try:
                self.resume_from = ck.resolve_checkpoint(self.run_dir)
            except CheckpointError:
                if ck.complete_checkpoints(self.ckpt_root) or (self.ckpt_root / "latest").exists():
                    raise
                self._say(f"no checkpoint in {self.run_dir}; starting from scratch")
        if self.resume_from is not None:
            saved = ck.read_config(self.resume_from)
            diffs = ck.model_differences(saved.model, m)
            if diffs:
                raise CheckpointError(
                    f"{self.resume_from}: cannot resume, the model differs: " + "; ".join(diffs)
                )

        # 2) seeds and model (identical init on every rank; DDP broadcasts rank 0's anyway)
        import random

        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        from lmlab.memcheck import check_training_fits  # refuse before allocating what cannot fit

        check_training_fits(
            cfg, cfg.batch_shape(info.world)[1], device, resolve_dtype(t.dtype, device)
        )
        model = build_model(m)
        if self.hf_init is not None and self.resume_from is None:
            from lmlab.export.hf_import import load_into

            load_into(model, self.hf_init)
        elif t.init_from and self.resume_from is None:
            src = ck.resolve_checkpoint(t.init_from)
            diffs = ck.model_differences(ck.read_config(src).model, m)
            if diffs:
                raise CheckpointError(
                    f"{src}: train.init_from does not fit this model: " + "; ".join(diffs)
                )
            ck.load_weights(model, src)
        if info.enabled:
            torch.manual_seed(t.seed + 7919 * info.rank)  # different dropout masks per rank
        self.n_params = sum(
            p.numel() for p in model.parameters() if p.requires_grad
        )  # a frozen encoder is not trained
        model.to(device)
        self.raw_model = model
        self.dtype = resolve_dtype(t.dtype, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.fsdp = t.parallel == "fsdp" and dd.initialized()
        if self.fsdp and self.dtype is torch.float16:
            raise ConfigError(
                "train.dtype: float16 is not supported with train.parallel=fsdp; use bfloat16"
            )
        # under FSDP the optimizer is built over the shards (step 5)
        self.optimizer = None if self.fsdp else build_optimizer(model, cfg.optim, t.lr, device)
        self.params = [p for p in model.parameters() if p.requires_grad]

        # 3) data
        self.global_batch, micro = cfg.batch_shape(info.world)
        T = m.context_length
        mix = (
            [(TokenSplit(p, "train"), f) for p, f in parse_mix(cfg.data.mix)]
            if data is None
            else []
        )
        self.loader = (
            BatchLoader(
                TokenSplit(cfg.data.path, "train", meta),
                T,
                self.global_batch,
                micro,
                t.seed,
                info.rank,
                info.world,
                device,
                mix,
            )
            if data is None
            else data.loader(self.global_batch, micro, t.seed, info.rank, info.world, device)
        )
        self.tokens_per_step = (
            self.global_batch * T if data is None else self.loader.tokens_per_step
        )
        has_val = data is None and meta["splits"].get("val", {}).get("shards")
        self.val = TokenSplit(cfg.data.path, "val", meta) if has_val else None
        # val_batches() -> this rank's share of the fixed val batches, as (x, y) pairs
        self.val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None
        bsz = cfg.eval_batch_size  # the same windows whatever the process count
        # under FSDP rank 0 evaluates every val batch on a gathered copy of the model
        vrank, vworld = (0, 1) if self.fsdp else (info.rank, info.world)
        if self.val is not None and cfg.eval.batches:
            mine = fixed_windows(self.val, T, bsz, cfg.eval.batches, t.seed)[vrank::vworld]
            self.val_batches = lambda: as_batches(mine, device)
        elif self.val is not None:  # the whole split, streamed (it may be large)
            val = self.val
            self.val_batches = lambda: as_batches(
                (w for i, w in enumerate(contiguous_windows(val, T, bsz)) if i % vworld == vrank),
                device,
            )
        elif data is not None:  # fixed (x, y) batches with masked targets, this rank's share
            fixed = data.val_batches(bsz, cfg.eval.batches, t.seed, vrank, vworld)
            if fixed is not None:  # (an empty share still joins the all-reduce)
                self.val_batches = lambda: fixed

        # 4) state (restored from the checkpoint when resuming)
        self.step = 0
        self.tokens = 0
        self.best_val = math.inf
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.last_val: float | None = None
        self.best_ckpt: dict[str, Any] = {"step": None, "val_loss": None}
        self.skipped = 0
        self.elapsed_before = 0.0
        self.guard = SpikeGuard(cfg.optim.spike_factor, cfg.optim.spike_window)
        if self.resume_from is not None:
            self._restore(self.resume_from)

        # 5) wrappers: activation checkpointing, FSDP shards (and the optimizer over them), the
        # micro-batch probe, compile, DDP
        if t.activation_checkpointing:
            fsdp.checkpoint_activations(model)
        if self.fsdp:
            fsdp.shard(model, self.dtype)
            self.optimizer = build_optimizer(model, cfg.optim, t.lr, device)
            self.params = [p for p in model.parameters() if p.requires_grad]
            if self.resume_from is not None:
                fsdp.load_optimizer_state(model, self.optimizer, self.resume_from)
        self.fused_loss = (
            t.fused_loss
            and getattr(self.raw_model, "supports_fused_loss", False)
            and m.vocab_size >= FUSED_LOSS_MIN_VOCAB
        )
        self.state_bytes: dict[str, int] | None = (
            None  # this rank's params+grads+optimizer, after step 1
        )
        self._new_state_bytes = False  # state_bytes not yet in a metrics record
        self.probed_micro_batch = 0  # what the memory probe found (0: no probe)
        if t.micro_batch_size == 0 and mf.can_probe(device) and data is None:
            self._fit_micro_batch(model)
        if t.compile:
            model = torch.compile(
                model, mode=None if t.compile_mode == "default" else t.compile_mode
            )
        self.model = model if self.fsdp else dd.wrap_ddp(model, info, device)
        self.model.train()
        self.flops_per_token = _flops_per_token(cfg)
        # fused head + loss (set in step 5): 7% faster per step at vocab 8192 on a 2-core CPU,
        # 4% slower at vocab 65 (more small ops than the plain path); below FUSED_LOSS_MIN_VOCAB the plain path
        self.precision: dict[str, Any] | None = None
        if t.dtype == "auto" and device.type == "cpu":
            self.dtype = self._auto_cpu_dtype(micro)
        peak = peak_flops(device, self.dtype)
        self.peak = peak * info.world if peak else None
        self.tokenizer = None
        self.logger = None
        if info.is_main:
            self._prepare_run_dir()

    # --- setup helpers --------------------------------------------------------------------------

    def _auto_cpu_dtype(self, micro: int) -> torch.dtype:
        """bf16 autocast when it trains this model faster here (lmlab.train.precision), the
        choice a resumed run made before, or fp32; every rank takes the same."""
        from lmlab.train.precision import pick_cpu_train_dtype

        saved = self.run_dir / "precision.json"
        if self.resume_from is not None and saved.exists():
            from lmlab.io import read_json

            self.precision = {**read_json(saved), "resumed": True}
        elif self.cfg.model.arch == "transformer":
            self.precision = pick_cpu_train_dtype(
                self.raw_model,
                micro,
                self.cfg.model.context_length,
                self.cfg.model.vocab_size,
                self.fused_loss,
            )
        else:  # the probe feeds token ids; other architectures take other inputs
            self.precision = {"dtype": "float32", "reason": f"model.arch = {self.cfg.model.arch}"}
        times = self.precision.get("seconds_per_pass")
        if times:
            self._say(
                f"train.dtype auto: {self.precision['dtype']} (forward+backward {1000 * times['float32']:.1f} ms "
                f"in float32, {1000 * times['bfloat16']:.1f} ms in bfloat16 autocast)"
            )
        votes = dd.all_reduce_sum(
            [float(self.precision["dtype"] == "bfloat16")], self.info, self.device
        )[0]
        return torch.bfloat16 if votes == self.info.world else torch.float32

    def _say(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, flush=True)

    def _prepare_run_dir(self) -> None:
        from lmlab.train.progress import Logger

        run = self.run_dir
        # refuses a folder of other files, or one holding a run without --resume/--force
        open_run_dir(run, resume=self.resume_requested, force=self.force, log=self._say)
        ck.clean_partial(self.ckpt_root)
        save_config(self.cfg, run / "config.toml")
        if self.precision is not None and not self.precision.get("resumed"):
            write_json(
                run / "precision.json",
                {**self.precision, "dtype": str(self.dtype).removeprefix("torch.")},
            )
        self.tokenizer = _load_tokenizer(self.cfg, self.meta)
        if self.tokenizer is not None and not (run / "tokenizer").exists():
            with contextlib.suppress(
                Exception
            ):  # a copy is a convenience; training does not need it
                self.tokenizer.save(run / "tokenizer")
        self.logger = Logger(run, self.cfg, self.step, resume=self.resume_from is not None)

    def _micro_loss(
        self, x: Any, y: torch.Tensor, inv_targets: float, model: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """One micro-batch's share of the step loss (summed over its targets, scaled)."""
        model = self.model if model is None else model
        with autocast(self.device, self.dtype):
            if self.fused_loss:  # head + cross-entropy in chunks, no logits tensor
                return model(x, targets=y) * inv_targets
            logits = forward(model, x)
            return (
                F.cross_entropy(
                    logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"
                )
                * inv_targets
            )

    def _fit_micro_batch(self, model: torch.nn.Module) -> None:
        """train.micro_batch_size = 0 on CUDA (or under an injected limit): the largest that fits."""
        per_rank = self.loader.per_rank
        T = self.cfg.model.context_length
        vocab = self.cfg.model.vocab_size

        gen = torch.Generator(self.device).manual_seed(0)

        def try_batch(n: int) -> None:
            x = torch.randint(0, vocab, (n, T), device=self.device, generator=gen)
            self._micro_loss(x, x, 1.0, model).backward()

        # the probe's dropout must not move training's random stream
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            found = mf.probe_micro_batch(model, self.optimizer, try_batch, per_rank, self.device)
        # every rank takes the smallest, so the ranks stay in step
        found = int(-dd.all_reduce_max([-float(found)], self.info, self.device)[0])
        if found == 0:
            raise ConfigError(
                f"train.micro_batch_size: not even one sequence of {T} tokens fits on {self.device}"
            )
        micro = mf.largest_divisor_at_most(per_rank, found)
        self.loader.micro_batch = micro
        self.probed_micro_batch = found
        self._say(
            f"memory probe: up to {found} sequences fit; micro-batch {micro} "
            f"({per_rank // micro} per step of {per_rank} per process)"
        )

    def _shrink_micro_batch(self) -> bool:
        """After an out-of-memory in a step: halve the micro-batch (a divisor of the per-process batch)."""
        old = self.loader.micro_batch
        # other ranks would wait for this one's collectives; an FSDP step cut short leaves its
        # gathered parameters behind
        if old <= 1 or self.info.enabled or self.fsdp:
            return False
        new = mf.largest_divisor_at_most(self.loader.per_rank, old // 2)
        self.loader.micro_batch = new
        self._say(f"out of memory at micro-batch {old}; retrying the step with {new}")
        return True

    def _restore(self, ckpt: Path) -> None:
        state = ck.read_state(ckpt)
        ck.load_weights(self.raw_model, ckpt, self.device)
        ck.load_training_state(ckpt, self.optimizer, self.scaler)  # under FSDP: after sharding
        try:
            self.step = int(state["step"])
            self.tokens = int(state["tokens"])
            self.loader.load_state_dict(state["loader"])
            self.best_val = (
                state["best_val_loss"] if state["best_val_loss"] is not None else math.inf
            )
            self.best_step = state["best_step"]
            self.evals_since_best = int(state["evals_since_best"])
            self.last_val = state["last_val_loss"]
            self.best_ckpt = dict(state["best_checkpoint"])
            self.skipped = int(state["skipped_steps"])
            self.elapsed_before = float(state["elapsed_s"])
            self.guard = SpikeGuard(
                self.cfg.optim.spike_factor, self.cfg.optim.spike_window, state["spike_history"]
            )
            rngs = state["rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{ckpt / 'state.json'}: incomplete training state ({e})"
            ) from None
        if len(rngs) == self.info.world:
            ck.set_rng_state(rngs[self.info.rank])
        elif self.info.is_main:
            ck.set_rng_state(rngs[0])
        self._say(f"resumed from {ckpt} (step {self.step})")

    # --- the loop -------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    def run(self) -> TrainResult:
        t = self.cfg.train
        stop_reason = "max_steps"
        diverged = False
        last_loss: float | None = None
        loss_limit = DIVERGED_LOSS_FACTOR * math.log(max(self.cfg.model.vocab_size, 2))
        ddp = self.info.enabled
        local_checks = not ddp and self.device.type == "cpu"  # cheap to look at the loss every step
        budget_s = t.max_minutes * 60.0
        accum = self.loader.accum_steps
        inv_targets = self.info.world / self.tokens_per_step  # DDP averages grads over ranks
        counts = getattr(self.loader, "counts", None)  # per-step (tokens, targets) when masks vary
        step_tokens = self.tokens_per_step
        last_saved = self.step
        in_step = False
        log_t, log_step = time.perf_counter(), self.step

        if self.info.is_main and self.step < t.max_steps:
            # through the logger: printed above the progress bar, never into its line
            (self.logger.print if self.logger is not None else self._say)(
                f"training {self.n_params / 1e6:.2f}M params on {self.device} ({str(self.dtype).removeprefix('torch.')}), "
                f"{self.info.world} process(es), batch {self.global_batch} x {self.cfg.model.context_length} tokens "
                f"({accum} micro-batch(es) per process), steps {self.step}->{t.max_steps}"
            )
        with _StopSignal() as sig:
            try:
                while self.step < t.max_steps:
                    in_step = True
                    step = self.step
                    lr = lr_at(step, t)
                    set_lr(self.optimizer, lr)
                    # 1) forward/backward over this rank's micro-batches (an out-of-memory in
                    # one process halves the micro-batch and redoes the step: same data, same loss)
                    if counts is not None:
                        step_tokens, n_targets = counts(step)
                        inv_targets = self.info.world / max(n_targets, 1)
                    rng = self._dropout_rng()
                    while True:
                        try:
                            loss_acc = self._forward_backward(step, inv_targets, ddp)
                            break
                        except torch.OutOfMemoryError:
                            mf.release(self.raw_model, self.device)
                            if not self._shrink_micro_batch():
                                raise
                            if rng is not None:
                                self._dropout_rng(rng)  # the retry draws the same dropout masks
                    # 2) clip, spike guard, update
                    if self.scaler.is_enabled():
                        self.scaler.unscale_(self.optimizer)
                    grad_norm = fsdp.full_value(_clip_grads(self.params, self.cfg.optim.grad_clip))
                    skip = self.guard.enabled and self.guard.is_spike(float(grad_norm))
                    if skip:
                        self.skipped += 1
                        if self.scaler.is_enabled():
                            self.scaler.update()
                    else:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    if self.state_bytes is None:
                        self._measure_state()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step = step + 1
                    self.loader.step = self.step
                    self.tokens += step_tokens
                    in_step = False
                    done = self.step
                    last = done >= t.max_steps
                    is_log = done % t.log_every == 0 or last
                    is_eval = (t.eval_every and done % t.eval_every == 0) or last
                    is_ckpt = (t.checkpoint_every and done % t.checkpoint_every == 0) or last
                    # 3) the checks that need the loss value: every step where it is free,
                    # otherwise at sync points, agreed over ranks in one collective
                    stop = None
                    if local_checks or is_log or is_eval or is_ckpt:
                        time_up = budget_s > 0 and self.elapsed() >= budget_s
                        total, t_up, interrupted = dd.all_reduce_sum(
                            [float(loss_acc), float(time_up), float(sig.flag)],
                            self.info,
                            self.device,
                        )
                        last_loss = total / self.info.world
                        if not math.isfinite(last_loss) or last_loss > loss_limit:
                            diverged, stop = True, "diverged"
                        elif interrupted:
                            stop = "interrupted"
                        elif t_up:
                            stop = "time_budget"
                    if self.logger is not None:
                        self.logger.advance(1, last_loss if is_log else None)
                    if is_log or stop:
                        now = time.perf_counter()
                        dt = max(now - log_t, 1e-9)
                        self._log_train(
                            done, last_loss, lr, grad_norm, (done - log_step), dt, diverged
                        )
                        log_t, log_step = now, done
                    if diverged:
                        self._say(
                            f"step {done}: loss {last_loss} is not finite or exploded; run marked diverged"
                        )
                        stop_reason = "diverged"
                        break
                    if (is_eval or stop in ("time_budget",)) and self.val_batches is not None:
                        if self._evaluate(done) and not stop:
                            stop = "early_stop"
                    if is_ckpt or stop:
                        self._checkpoint(done)
                        last_saved = done
                    if stop:
                        stop_reason = stop
                        break
            except KeyboardInterrupt:
                # a second Ctrl-C: save the last complete step, without collectives; mid-step
                # the weights may already hold a half-applied update, so keep the last checkpoint
                stop_reason = "interrupted"
                if self.info.is_main and self.step > last_saved and not diverged and not in_step:
                    self._checkpoint(self.step, collective=False)
        result = self._finish(stop_reason, diverged, last_loss)
        if stop_reason == "interrupted":
            self._say(
                f"interrupted at step {self.step}; checkpoint saved in {self.ckpt_root} "
                "(continue: the same `lmlab run`, `lmlab sweep` or `lmlab sft --resume` command, or `lmlab train ... --resume`)"
            )
            raise KeyboardInterrupt
        return result

    # --- step actions ---------------------------------------------------------------------------

    def _forward_backward(self, step: int, inv_targets: float, ddp: bool) -> torch.Tensor:
        """Accumulate this rank's gradients for ``step``; returns its summed (scaled) loss."""
        batches = self.loader.get(step)
        accum = len(batches)
        loss_acc = torch.zeros((), device=self.device)
        with mf.watch(self.raw_model, self.optimizer):  # a no-op unless a memory limit is injected
            for i, (x, y) in enumerate(batches):
                # DDP syncs on the last micro-batch only; FSDP reduce-scatters every one, so
                # gradients stay sharded in fp32 instead of accumulating unsharded
                no_sync = ddp and not self.fsdp and i < accum - 1
                with self.model.no_sync() if no_sync else contextlib.nullcontext():
                    loss = self._micro_loss(x, y, inv_targets)
                    self.scaler.scale(loss).backward()
                loss_acc += loss.detach()
        return loss_acc

    def _dropout_rng(self, restore: Any = None) -> Any:
        """The torch generator states dropout draws from (get), or put them back (restore)."""
        if restore is not None:
            torch.set_rng_state(restore[0])
            if restore[1] is not None:
                torch.cuda.set_rng_state(restore[1], self.device)
            return None
        if self.cfg.model.dropout <= 0:
            return None
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return (torch.get_rng_state(), cuda)

    def _measure_state(self) -> None:
        """This rank's parameter + gradient + optimizer bytes after its first update (max over ranks)."""
        mine = fsdp.local_state_bytes(self.raw_model, self.optimizer)
        keys = ("params", "grads", "optimizer", "total")
        peak = dd.all_reduce_max([float(mine[k]) for k in keys], self.info, self.device)
        self.state_bytes = {k: int(v) for k, v in zip(keys, peak)}
        self._new_state_bytes = True
        if self.info.enabled or self.fsdp:
            self._say(
                f"params + grads + optimizer state: {self.state_bytes['total'] / 2**20:.2f} MiB per process "
                f"({'sharded over' if self.fsdp else 'replicated on'} {self.info.world})"
            )

    def _log_train(
        self,
        step: int,
        loss: float | None,
        lr: float,
        grad_norm: torch.Tensor,
        n_steps: int,
        dt: float,
        diverged: bool,
    ) -> None:
        if self.logger is None:
            return
        tok_s = n_steps * self.tokens_per_step / dt
        rec: dict[str, Any] = {
            "step": step,
            "train_loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tok_per_s": tok_s,
            "ms_per_step": 1000.0 * dt / max(n_steps, 1),
            "tokens": self.tokens,
            "elapsed": self.elapsed(),
        }
        if self.peak and self.flops_per_token:
            rec["mfu"] = tok_s * self.flops_per_token / self.peak
        if self.device.type == "cuda":
            rec["max_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self._new_state_bytes:
            rec["state_bytes"] = (
                self.state_bytes["total"] if self.state_bytes else None
            )  # once, per process
            self._new_state_bytes = False
        if self.skipped:
            rec["skipped"] = self.skipped
        if diverged:
            rec["diverged"] = True
        remaining = self.cfg.train.max_steps - step
        rec["eta_s"] = remaining * dt / max(n_steps, 1)
        self.logger.train_step(rec)

    def _evaluate(self, step: int) -> bool:
        """Evaluate the fixed val batches; True when early stopping says stop."""
        from lmlab.eval.metrics import evaluate_batches

        # FSDP: rank 0 evaluates all val batches on the gathered model; the others add zeros
        model = (
            fsdp.gather_model(self.raw_model, self.cfg, self.device, self.info.is_main)
            if self.fsdp
            else self.raw_model
        )
        batches = self.val_batches() if model is not None else ()
        if self.probed_micro_batch:  # the same val windows, in pieces that fit
            batches = mf.split_batches(batches, self.probed_micro_batch)
        sums = (
            evaluate_batches(model, batches, self.device, self.dtype)
            if model is not None
            else ({"nats": 0.0, "tokens": 0, "correct": 0})
        )
        nats, count, correct = dd.all_reduce_sum(
            [sums["nats"], sums["tokens"], sums["correct"]], self.info, self.device
        )
        val = nats / max(count, 1)
        self.last_val = val
        c = self.cfg.train
        if val < self.best_val - c.min_delta:
            self.best_val, self.best_step, self.evals_since_best = val, step, 0
        else:
            self.evals_since_best += 1
        if self.logger is not None:
            rec = {
                "step": step,
                "val_loss": val,
                "perplexity": math.exp(min(val, 700.0)),
                "accuracy": correct / max(count, 1),
            }
            if self.val is not None and self.val.n_bytes:
                ratio = self.val.n_bytes / int(self.val.info.get("tokens") or self.val.n_tokens)
                rec["bits_per_byte"] = nats / (math.log(2) * count * ratio)
            rec["elapsed"] = self.elapsed()
            self.logger.write(rec)
            self.logger.print(
                f"step {step} | val loss {val:.4f} | best {self.best_val:.4f} (step {self.best_step})"
            )
            self._write_samples(step, val, model)
        return bool(c.patience) and self.evals_since_best >= c.patience

    def _write_samples(self, step: int, val: float, model: torch.nn.Module) -> None:
        e = self.cfg.eval
        if self.tokenizer is None or e.samples == 0:
            return
        eot = self.meta.get("eot_id")
        start = int(eot) if eot is not None else 0
        custom = getattr(
            self.data, "samples", None
        )  # a batch source that needs more than a start token
        if custom is not None:
            texts = custom(model, self.tokenizer, e.samples, e.sample_tokens, self.device)
        else:
            texts = _samples(
                model,
                self.tokenizer,
                e.samples,
                e.sample_tokens,
                start,
                self.device,
                self.cfg.train.seed + step,
            )
        path = self.run_dir / "samples.md"
        parts = [f"## step {step} (val loss {val:.4f})\n"]
        for i, text in enumerate(texts):
            parts.append(f"### sample {i + 1}\n\n```\n{text.replace('```', '` ` `')}\n```\n")
        with open_append(path) as f:  # never through a link placed in the run folder
            f.write("\n".join(parts) + "\n")

    def _checkpoint(self, step: int, collective: bool = True) -> None:
        rngs = dd.gather_objects(ck.rng_state(), self.info) if collective else [ck.rng_state()]
        model, optimizer = self.raw_model, self.optimizer
        if self.fsdp:  # gather the shards into one ordinary checkpoint (a collective)
            if not collective:
                self._say("FSDP: no checkpoint without the other ranks; the last saved one stands")
                return
            model, optimizer = fsdp.gather_for_checkpoint(
                self.raw_model, self.optimizer, self.cfg, self.info.is_main
            )
        if not self.info.is_main:
            return
        # the best checkpoint is judged by the most recent val loss at save time
        if self.last_val is not None and (
            self.best_ckpt["val_loss"] is None or self.last_val < self.best_ckpt["val_loss"]
        ):
            self.best_ckpt = {"step": step, "val_loss": self.last_val}
        state = {
            "tokens": self.tokens,
            "loader": self.loader.state_dict(),
            "rng": rngs,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "last_val_loss": self.last_val,
            "best_checkpoint": self.best_ckpt,
            "spike_history": list(self.guard.history),
            "skipped_steps": self.skipped,
            "elapsed_s": self.elapsed(),
            "world_size": self.info.world,
            "global_batch": self.global_batch,
        }
        ck.save_checkpoint(
            self.ckpt_root,
            step,
            model,
            optimizer,
            self.scaler,
            state,
            self.cfg,
            keep=self.cfg.train.keep_checkpoints,
            best_step=self.best_ckpt["step"],
        )
        if self.best_ckpt["step"] is not None:
            atomic_write_text(
                self.ckpt_root / "best", ck.checkpoint_name(self.best_ckpt["step"]) + "\n"
            )

    def _finish(self, stop_reason: str, diverged: bool, last_loss: float | None) -> TrainResult:
        result = TrainResult(
            run_dir=str(self.run_dir),
            steps=self.step,
            tokens=self.tokens,
            final_train_loss=last_loss
            if last_loss is not None and math.isfinite(last_loss)
            else None,
            final_val_loss=self.last_val,
            best_val_loss=self.best_val if math.isfinite(self.best_val) else None,
            best_step=self.best_step,
            wall_time_s=self.elapsed(),
            diverged=diverged,
            stop_reason=stop_reason,
            skipped_steps=self.skipped,
            params=self.n_params,
        )
        if self.logger is not None:
            self.logger.close()
            write_json(self.run_dir / "result.json", result.as_dict())
            if stop_reason != "interrupted":
                self._report(result)
                msg = f"done: {stop_reason} at step {self.step}"
                if self.last_val is not None:
                    msg += f", val loss {self.last_val:.4f} (best {self.best_val:.4f} at step {self.best_step})"
                self._say(msg + f", {result.wall_time_s:.1f}s")
        return result

    def _report(self, result: TrainResult) -> None:
        """report.md and loss.png from what the run wrote (lmlab.report)."""
        from lmlab.report import write_report

        try:
            write_report(self.run_dir, {"Result": result.table()})
        except (OSError, ValueError, ImportError) as e:  # the run itself is complete and saved
            self._say(f"warning: could not write {self.run_dir / 'report.md'}: {e}")
