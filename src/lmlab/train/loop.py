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

The parts, one module each: :mod:`.setup` builds the run (model, optimizer, batch source,
precision, DDP/FSDP), :mod:`.step` runs one optimizer step, :mod:`.hooks` does what follows a
step (logging, eval, early stopping, samples, checkpoints, the stop checks); the batches come
through one protocol (:class:`lmlab.data.batches.TrainingData`) and the checkpoint's state is
one :class:`lmlab.runs.state.TrainState`. This module is the loop that ties them together.
"""

from __future__ import annotations

import copy
import gc
from typing import Any

import torch

from lmlab.config import Config
from lmlab.data.batches import TrainingData, check_dataset_tokenizer
from lmlab.device import resolve_device
from lmlab.train import distributed as dd
from lmlab.train.hooks import DIVERGED_LOSS_FACTOR, AfterStep, StopSignal, TrainResult
from lmlab.train.host_memory import retain_freed_memory
from lmlab.train.setup import FUSED_LOSS_MIN_VOCAB, TrainSetup
from lmlab.train.step import SPIKE_MIN_HISTORY, SpikeGuard, train_step

__all__ = [
    "DIVERGED_LOSS_FACTOR",
    "FUSED_LOSS_MIN_VOCAB",
    "SPIKE_MIN_HISTORY",
    "SpikeGuard",
    "TrainResult",
    "check_dataset_tokenizer",
    "train",
]


def train(
    cfg: Config, resume: bool = False, data: TrainingData | None = None, force: bool = False
) -> TrainResult:
    """Train ``cfg`` into ``cfg.train.out``; see the module docstring.

    ``data`` replaces the prepared dataset at ``data.path`` as the batch source (fine-tuning,
    the encoder-decoder): a :class:`lmlab.data.batches.TrainingData`, such as
    :class:`lmlab.data.sft.SftData` or :class:`lmlab.data.pairs.PairData`.

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
        if info.enabled:
            # free the trainer's reference cycles (the DDP reducer holds the process group)
            # while the group is alive: a gloo group whose last reference goes only at
            # interpreter exit stops its threads there, which aborts now and then with the
            # same message (rare; seen in tests/test_muon.py's DDP run)
            gc.collect()
        dd.teardown()


class _Trainer:
    """Setup, then ``train_step`` and the after-step hooks until a stop."""

    def __init__(
        self,
        cfg: Config,
        info: dd.Dist,
        device: torch.device,
        resume: bool,
        data: Any = None,
        force: bool = False,
    ):
        self.setup = TrainSetup(cfg, info, device, resume, data, force)
        self.state = self.setup.state
        o = cfg.optim
        self.guard = SpikeGuard(o.spike_factor, o.spike_window, self.state.spike_history)
        self.hooks = AfterStep(self.setup, self.state, self.guard)

    def run(self) -> TrainResult:
        s, st, hooks = self.setup, self.state, self.hooks
        t = s.cfg.train
        stop_reason = "max_steps"
        in_step = False
        if s.info.is_main and st.step < t.max_steps:
            hooks.say(
                f"training {s.n_params / 1e6:.2f}M params on {s.device} ({str(s.dtype).removeprefix('torch.')}), "
                f"{s.info.world} process(es), batch {s.global_batch} x {s.cfg.model.context_length} tokens "
                f"({s.loader.accum_steps} micro-batch(es) per process), steps {st.step}->{t.max_steps}"
            )
        with StopSignal() as sig:
            try:
                while st.step < t.max_steps:
                    in_step = True
                    out = train_step(s, self.guard, st.step, measure=hooks.state_bytes is None)
                    st.step += 1
                    s.loader.step = st.step
                    st.tokens += out.tokens
                    st.skipped_steps += out.skipped
                    in_step = False
                    stop = hooks.after_step(out, sig)
                    if stop:
                        stop_reason = stop
                        break
            except KeyboardInterrupt:
                # a second Ctrl-C: save the last complete step, without collectives; mid-step
                # the weights may already hold a half-applied update, so keep the last checkpoint
                stop_reason = "interrupted"
                saved = st.step <= hooks.last_saved
                if s.info.is_main and not saved and not hooks.diverged and not in_step:
                    hooks.checkpoint(st.step, collective=False)
        result = hooks.finish(stop_reason)
        if stop_reason == "interrupted":
            s.say(
                f"interrupted at step {st.step}; checkpoint saved in {s.ckpt_root} "
                "(continue: the same `lmlab run`, `lmlab sweep` or `lmlab sft --resume` command, or `lmlab train ... --resume`)"
            )
            raise KeyboardInterrupt
        return result
