"""Everything a run builds before its first step: where it starts, the model, the optimizer, the
batch source, the precision and the DDP/FSDP wrapping (:class:`TrainSetup`).

The order matters for exact resume and reproducibility: the seeds are set before the model is
built (identical init on every rank), the checkpoint is restored before FSDP shards the model
(whose optimizer then loads its sharded state), and nothing that draws from the training
random stream (the memory probe, the precision probe) runs without forking it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.accounting import training_flops_per_token
from lmlab.config import Config
from lmlab.data.batches import Batch, BatchSource, ProcessBatch, TokenData, TrainingData
from lmlab.device import peak_flops, resolve_dtype
from lmlab.errors import CheckpointError, ConfigError, LmlabError
from lmlab.export.hf_import import load_into, start_from_hf
from lmlab.io import read_json
from lmlab.memcheck import check_training_fits
from lmlab.model import build_model
from lmlab.model.loss import run_eagerly_under_compile
from lmlab.runs import check_run_dir, resolve_run_config
from lmlab.runs.state import TrainState
from lmlab.train import checkpoint as ck
from lmlab.train import distributed as dd
from lmlab.train import fsdp
from lmlab.train import memory_fit as mf
from lmlab.train.optim import build_optimizer
from lmlab.train.precision import pick_cpu_train_dtype
from lmlab.train.step import micro_loss

# train.fused_loss applies from this vocabulary size up (bench/RESULTS.md).
FUSED_LOSS_MIN_VOCAB = 1024


def uses_fused_loss(cfg: Config, model: Any) -> bool:
    """Whether ``cfg``'s loss is computed with the fused head + cross-entropy: asked for, the
    model has it, and the vocabulary is large enough for it to pay (7% faster per step at
    vocab 8192 on a 2-core CPU, 4% slower at vocab 65: more small ops than the plain path)."""
    return bool(
        cfg.train.fused_loss
        and getattr(model, "supports_fused_loss", False)
        and cfg.model.vocab_size >= FUSED_LOSS_MIN_VOCAB
    )


def _flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token (3 x forward, lmlab.accounting's convention), for MFU."""

    if cfg.model.arch == "encdec":  # accounting counts decoder-only models; no MFU here
        return 0.0
    return training_flops_per_token(cfg.model, cfg.model.context_length)


class TrainSetup:
    """The built run: config, model (``raw_model`` bare, ``model`` wrapped), optimizer,
    scaler, batch source (``loader``), val batches, precision; ``state`` is where training
    starts (restored from the checkpoint when resuming)."""

    def __init__(
        self,
        cfg: Config,
        info: dd.Dist,
        device: torch.device,
        resume: bool,
        data: TrainingData | None = None,
        force: bool = False,
    ):
        self.cfg, self.info, self.device = cfg, info, device
        self.t0 = time.monotonic()
        self.elapsed_before = 0.0
        self.run_dir = Path(cfg.train.out)  # as given (messages); config.toml records it absolute
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resume_requested, self.force = resume, force
        # another batch source (SFT, pairs), else the prepared dataset at data.path
        self.data: TrainingData = data if data is not None else TokenData(cfg)
        self.meta = self.data.meta
        hf_init = self._resolve_config()
        self._check_run_dir(resume, force)  # a refusal before any model is built or measured
        self.resume_from = self._start_point(resume)
        self._build_model(hf_init)
        self._open_data()
        self.state = TrainState(world_size=info.world, global_batch=self.global_batch)
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self._wrap()

    # --- 1) the config and where the run starts ---------------------------------------------------

    def _resolve_config(self) -> Any:
        """Fill the config from the data (and ``train.init_from = "hf:..."``): what config.toml holds."""
        cfg = self.cfg
        # train.init_from = "hf:...": its config is the model (lmlab.export.hf_import)
        hf_init = None
        if cfg.train.init_from.startswith("hf:"):
            hf_init, changed = start_from_hf(cfg, self.meta)
            self.say(
                f"model config taken from {cfg.train.init_from}"
                + (
                    f" ({len(changed)} key(s) differed from the config's "
                    f"[model]: {', '.join(c.split(':')[0] for c in changed)})"
                    if changed
                    else ""
                )
            )
        self.data.check(cfg)
        resolve_run_config(cfg, self.meta)  # vocab size filled in, paths absolute
        return hf_init

    def _check_run_dir(self, resume: bool, force: bool) -> None:
        """Rank 0 checks the run folder and every rank learns its verdict, so a refusal stops
        all processes at once with one line each: the others would otherwise go on to their
        first collective and crash there (gloo's traceback) or wait for rank 0."""
        refusal: LmlabError | None = None
        if self.info.is_main:
            try:
                check_run_dir(self.run_dir, resume=resume, force=force)
            except LmlabError as e:
                refusal = e
        refused = dd.gather_objects(refusal is not None, self.info)[0]
        if refusal is not None:
            raise refusal
        if refused:
            raise CheckpointError(f"{self.run_dir}: refused by rank 0, whose message says why")

    def _start_point(self, resume: bool) -> Path | None:
        """The checkpoint of this run to resume from, or None (fresh)."""
        if not resume:
            return None
        try:
            ckpt = ck.resolve_checkpoint(self.run_dir)
        except CheckpointError:
            if ck.complete_checkpoints(self.ckpt_root) or (self.ckpt_root / "latest").exists():
                raise
            self.say(f"no checkpoint in {self.run_dir}; starting from scratch")
            return None
        diffs = ck.model_differences(ck.read_config(ckpt).model, self.cfg.model)
        if diffs:
            raise CheckpointError(f"{ckpt}: cannot resume, the model differs: " + "; ".join(diffs))
        return ckpt

    # --- 2) seeds, model, optimizer -----------------------------------------------------------------

    def _build_model(self, hf_init: Any) -> None:
        cfg, info, device = self.cfg, self.info, self.device
        t = cfg.train
        # identical init on every rank (DDP broadcasts rank 0's anyway)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.dtype = resolve_dtype(t.dtype, device)
        # refuse before allocating what cannot fit
        check_training_fits(cfg, cfg.batch_shape(info.world)[1], device, self.dtype)
        model = build_model(cfg.model)
        if hf_init is not None and self.resume_from is None:
            load_into(model, hf_init)
        elif t.init_from and self.resume_from is None:
            src = ck.resolve_checkpoint(t.init_from)
            diffs = ck.model_differences(ck.read_config(src).model, cfg.model)
            if diffs:
                raise CheckpointError(
                    f"{src}: train.init_from does not fit this model: " + "; ".join(diffs)
                )
            ck.load_weights(model, src)
        if info.enabled:
            torch.manual_seed(t.seed + 7919 * info.rank)  # different dropout masks per rank
        # a frozen encoder is not trained
        self.n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model.to(device)
        self.raw_model = self.model = model
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.fsdp = t.parallel == "fsdp" and dd.initialized()
        if self.fsdp and self.dtype is torch.float16:
            raise ConfigError(
                "train.dtype: float16 is not supported with train.parallel=fsdp; use bfloat16"
            )
        # under FSDP the optimizer is built over the shards (_wrap)
        self.optimizer = None if self.fsdp else build_optimizer(model, cfg.optim, t.lr, device)
        self.params = [p for p in model.parameters() if p.requires_grad]

    # --- 3) the batch source ------------------------------------------------------------------------

    def _open_data(self) -> None:
        cfg, info = self.cfg, self.info
        self.global_batch, micro = cfg.batch_shape(info.world)
        shape = ProcessBatch(
            self.global_batch, micro, cfg.train.seed, info.rank, info.world, self.device
        )
        self.loader: BatchSource = self.data.loader(shape)
        self.tokens_per_step = self.loader.tokens_per_step
        # the same val windows whatever the process count; under FSDP rank 0 evaluates every
        # val batch on a gathered copy of the model
        vrank, vworld = (0, 1) if self.fsdp else (info.rank, info.world)
        self.val_batches: Iterable[Batch] | None = self.data.val_batches(
            cfg.eval_batch_size, cfg.eval.batches, cfg.train.seed, vrank, vworld
        )
        self.bytes_per_token = self.data.val_bytes_per_token()

    def _restore(self, ckpt: Path) -> None:
        """Weights, optimizer, scaler, progress, batch position and RNG states of ``ckpt``."""
        state = ck.read_train_state(ckpt)
        ck.load_weights(self.raw_model, ckpt, self.device)
        ck.load_training_state(ckpt, self.optimizer, self.scaler)  # under FSDP: after sharding
        self.state = state
        where = ckpt / "state.json"
        try:
            self.loader.load_state_dict(self.state.loader)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: incomplete training state ({e})") from None
        self.elapsed_before = self.state.elapsed_s
        if self.state.fitted_max_steps:  # train.fit_to_time refitted the run before the stop
            self.cfg.train.max_steps = self.state.fitted_max_steps
        rngs = self.state.rng
        if len(rngs) == self.info.world:
            ck.set_rng_state(rngs[self.info.rank])
        elif self.info.is_main:
            ck.set_rng_state(rngs[0])
        self.say(f"resumed from {ckpt} (step {self.state.step})")

    # --- 4) wrappers and precision --------------------------------------------------------------

    def _wrap(self) -> None:
        """Activation checkpointing, FSDP shards (and the optimizer over them), the micro-batch
        probe, compile, DDP, then the CPU precision choice."""
        cfg, t, device = self.cfg, self.cfg.train, self.device
        model = self.raw_model
        if t.activation_checkpointing:
            fsdp.checkpoint_activations(model)
        if self.fsdp:
            fsdp.shard(model, self.dtype)
            self.optimizer = build_optimizer(model, cfg.optim, t.lr, device)
            self.params = [p for p in model.parameters() if p.requires_grad]
            if self.resume_from is not None:
                fsdp.load_optimizer_state(model, self.optimizer, self.resume_from)
        self.fused_loss = uses_fused_loss(cfg, model)
        self.probed_micro_batch = 0  # what the memory probe found (0: no probe)
        if t.micro_batch_size == 0 and mf.can_probe(device) and self.data.fixed_windows:
            self._fit_micro_batch(model)
        if t.compile:
            run_eagerly_under_compile()
            model = torch.compile(
                model, mode=None if t.compile_mode == "default" else t.compile_mode
            )
        self.model = model if self.fsdp else dd.wrap_ddp(model, self.info, device)
        self.model.train()
        self.flops_per_token = _flops_per_token(cfg)
        self.precision: dict[str, Any] | None = None
        if t.dtype == "auto" and device.type == "cpu":
            self.dtype = self._auto_cpu_dtype(cfg.batch_shape(self.info.world)[1])
        peak = peak_flops(device, self.dtype)
        self.peak = peak * self.info.world if peak else None

    def _auto_cpu_dtype(self, micro: int) -> torch.dtype:
        """bf16 autocast when it trains this model faster here (lmlab.train.precision), the
        choice a resumed run made before, or fp32; every rank takes the same."""
        m = self.cfg.model
        saved = self.run_dir / "precision.json"
        if self.resume_from is not None and saved.exists():
            self.precision = {**read_json(saved), "resumed": True}
        elif m.arch == "transformer":
            self.precision = pick_cpu_train_dtype(
                self.raw_model, micro, m.context_length, m.vocab_size, self.fused_loss
            )
        else:  # the probe feeds token ids; other architectures take other inputs
            self.precision = {"dtype": "float32", "reason": f"model.arch = {m.arch}"}
        times = self.precision.get("seconds_per_pass")
        if times:
            self.say(
                f"train.dtype auto: {self.precision['dtype']} (forward+backward {1000 * times['float32']:.1f} ms "
                f"in float32, {1000 * times['bfloat16']:.1f} ms in bfloat16 autocast)"
            )
        votes = dd.all_reduce_sum(
            [float(self.precision["dtype"] == "bfloat16")], self.info, self.device
        )[0]
        return torch.bfloat16 if votes == self.info.world else torch.float32

    def _fit_micro_batch(self, model: torch.nn.Module) -> None:
        """train.micro_batch_size = 0 on CUDA (or under an injected limit): the largest that fits."""
        per_rank = self.loader.per_rank
        T, vocab = self.cfg.model.context_length, self.cfg.model.vocab_size
        gen = torch.Generator(self.device).manual_seed(0)

        def try_batch(n: int) -> None:
            x = torch.randint(0, vocab, (n, T), device=self.device, generator=gen)
            micro_loss(self, x, x, 1.0, model).backward()

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
        self.say(
            f"memory probe: up to {found} sequences fit; micro-batch {micro} "
            f"({per_rank // micro} per step of {per_rank} per process)"
        )

    # --- helpers ----------------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, flush=True)

    def elapsed(self) -> float:
        """Wall seconds of the run, over every resume."""
        return self.elapsed_before + time.monotonic() - self.t0
