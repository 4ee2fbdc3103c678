"""What happens after each optimizer step: logging, the stop checks, evaluation with early
stopping and samples, checkpoints; and at the end result.json and report.md (:class:`AfterStep`).

The checks that need the loss value (divergence, the time budget, a stop signal) run every step
where reading the loss is free (one CPU process), otherwise only at log, eval and checkpoint
steps, agreed over ranks in one collective.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.config import Config, save_config
from lmlab.errors import LmlabError
from lmlab.eval.metrics import evaluate_batches, summarize
from lmlab.io import atomic_write_text, open_append, write_json
from lmlab.report import markdown_table, write_report
from lmlab.runs import open_run_dir
from lmlab.runs.state import TrainState
from lmlab.sample import generate
from lmlab.tokenizer import load_tokenizer
from lmlab.train import checkpoint as ck
from lmlab.train import distributed as dd
from lmlab.train import fsdp
from lmlab.train import memory_fit as mf
from lmlab.train.progress import Logger
from lmlab.train.setup import TrainSetup
from lmlab.train.step import SpikeGuard, StepOutput

# A loss this many times ln(vocab_size) (uniform guessing) can only come from a blown-up model.
DIVERGED_LOSS_FACTOR = 100.0
SAMPLE_TEMPERATURE = 0.8  # samples.md's unconditional samples


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

        return markdown_table(
            [{k: v for k, v in self.as_dict().items() if k != "run_dir" and v is not None}]
        )


class StopSignal:
    """SIGINT/SIGTERM set a flag checked between steps (a second Ctrl-C interrupts at once)."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
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


def load_samples_tokenizer(cfg: Config, meta: dict[str, Any]) -> Any:
    """The dataset's tokenizer for samples, or None (samples are then skipped)."""
    path = cfg.data.tokenizer or meta.get("tokenizer") or ""
    if not path or not Path(path).exists():
        return None
    try:
        return load_tokenizer(path)
    except (ImportError, LmlabError, OSError):
        return None


def unconditional_samples(
    model: torch.nn.Module, tok: Any, n: int, length: int, start_id: int, seed: int
) -> list[str]:
    """``n`` samples of ``length`` tokens after ``start_id`` at temperature 0.8, through the
    KV-cache generator (:func:`lmlab.sample.generate`) with its own seeded RNG, so training's
    random stream, and therefore exact resume, is untouched."""
    out = generate(
        model,
        tok,
        [start_id],
        max_new_tokens=length,
        temperature=SAMPLE_TEMPERATURE,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        num_samples=n,
        seed=seed,
        stop_at_eot=False,  # a sample may run on past a document's end, as in training
    )
    return [tok.decode(s.tokens) for s in out]


class AfterStep:
    """The after-step hooks of one run (rank 0 owns the run folder, the logger and samples)."""

    def __init__(self, s: TrainSetup, state: TrainState, guard: SpikeGuard):
        self.s, self.state, self.guard = s, state, guard
        t = s.cfg.train
        self.loss_limit = DIVERGED_LOSS_FACTOR * math.log(max(s.cfg.model.vocab_size, 2))
        # cheap to look at the loss every step
        self.local_checks = not s.info.enabled and s.device.type == "cpu"
        self.budget_s = t.max_minutes * 60.0
        self.fit_from = (state.step, state.elapsed_s)  # fit_to_time's pace: since this point
        self.last_loss: float | None = None
        self.diverged = False
        self.last_saved = state.step
        self.log_t, self.log_step = time.perf_counter(), state.step
        self.state_bytes: dict[str, int] | None = None  # this rank's, after step 1
        self._new_state_bytes = False  # state_bytes not yet in a metrics record
        self.tokenizer: Any = None
        self.logger: Logger | None = None
        if s.info.is_main:
            self._prepare_run_dir()

    def _prepare_run_dir(self) -> None:
        s, run = self.s, self.s.run_dir
        # refuses a folder of other files, or one holding a run without --resume/--force
        open_run_dir(run, resume=s.resume_requested, force=s.force, log=s.say)
        ck.clean_partial(s.ckpt_root)
        save_config(s.cfg, run / "config.toml")
        if s.precision is not None and not s.precision.get("resumed"):
            write_json(
                run / "precision.json",
                {**s.precision, "dtype": str(s.dtype).removeprefix("torch.")},
            )
        self.tokenizer = load_samples_tokenizer(s.cfg, s.meta)
        if self.tokenizer is not None and not (run / "tokenizer").exists():
            # a copy is a convenience; training does not need it
            with contextlib.suppress(Exception):
                self.tokenizer.save(run / "tokenizer")
        self.logger = Logger(run, s.cfg, self.state.step, resume=s.resume_from is not None)

    def say(self, msg: str) -> None:
        """Through the logger when there is one: printed above the progress bar, never into it."""
        (self.logger.print if self.logger is not None else self.s.say)(msg)

    # --- after every step -------------------------------------------------------------------------

    def after_step(self, out: StepOutput, sig: StopSignal) -> str | None:
        """Log, check, evaluate and checkpoint after step ``state.step``; the stop reason or None."""
        if out.state_bytes is not None:
            self._record_state_bytes(out.state_bytes)
        t, done = self.s.cfg.train, self.state.step
        last = done >= t.max_steps
        is_log = done % t.log_every == 0 or last
        is_eval = (t.eval_every and done % t.eval_every == 0) or last
        is_ckpt = (t.checkpoint_every and done % t.checkpoint_every == 0) or last
        stop = None
        if self.local_checks or is_log or is_eval or is_ckpt:
            stop = self._checks(out.loss, sig)
        if self.logger is not None:
            self.logger.advance(1, self.last_loss if is_log else None)
        if is_log or stop:
            now = time.perf_counter()
            self._log_train(out, done - self.log_step, max(now - self.log_t, 1e-9))
            self.log_t, self.log_step = now, done
        if self.diverged:
            self.s.say(
                f"step {done}: loss {self.last_loss} is not finite or exploded; run marked diverged"
            )
            return "diverged"
        if (is_eval or stop == "time_budget") and self.s.val_batches is not None:
            if self.evaluate(done) and not stop:
                stop = "early_stop"
        if t.fit_to_time and is_eval and not last and not stop:
            self._fit_to_time(done)
        if is_ckpt or stop:
            self.checkpoint(done)
            self.last_saved = done
        return stop

    def _fit_to_time(self, done: int) -> None:
        """``train.fit_to_time``, at each eval before the last step: set max_steps to what the
        pace since the previous eval (that eval's cost included, as each later one will cost)
        fits in the time left. A step time measured before the run is a few steps' worth, and a
        shared machine's pace drifts: the demo's plan was off by up to 16% either way, leaving
        time unused or its schedule cut short by the time budget."""
        s, t = self.s, self.s.cfg.train
        (elapsed,) = dd.all_reduce_sum([s.elapsed()], s.info, s.device)
        elapsed /= s.info.world  # the ranks agree on one value
        since_step, since_s = self.fit_from
        pace = (elapsed - since_s) / max(done - since_step, 1)
        fitted = done + max(1, int((self.budget_s - elapsed) / max(pace, 1e-9)))
        self.fit_from = (done, elapsed)
        if fitted == t.max_steps:
            return
        self.say(
            f"train.fit_to_time: {pace * 1000:.0f} ms/step since step {since_step} -> max_steps "
            f"{t.max_steps} -> {fitted}"
        )
        t.max_steps = self.state.fitted_max_steps = fitted
        if self.logger is not None:
            self.logger.max_steps = fitted
        if s.info.is_main:
            save_config(s.cfg, s.run_dir / "config.toml")  # what the run really does

    def _checks(self, loss: torch.Tensor, sig: StopSignal) -> str | None:
        """The stop checks that need the loss value, agreed over ranks in one collective."""
        s = self.s
        time_up = self.budget_s > 0 and s.elapsed() >= self.budget_s
        total, t_up, interrupted = dd.all_reduce_sum(
            [float(loss), float(time_up), float(sig.flag)], s.info, s.device
        )
        self.last_loss = total / s.info.world
        if not math.isfinite(self.last_loss) or self.last_loss > self.loss_limit:
            self.diverged = True
            return "diverged"
        if interrupted:
            return "interrupted"
        return "time_budget" if t_up else None

    def _record_state_bytes(self, state_bytes: dict[str, int]) -> None:
        self.state_bytes, self._new_state_bytes = state_bytes, True
        s = self.s
        if s.info.enabled or s.fsdp:
            s.say(
                f"params + grads + optimizer state: {state_bytes['total'] / 2**20:.2f} MiB per process "
                f"({'sharded over' if s.fsdp else 'replicated on'} {s.info.world})"
            )

    def _log_train(self, out: StepOutput, n_steps: int, dt: float) -> None:
        if self.logger is None:
            return
        s, step = self.s, self.state.step
        tok_s = n_steps * s.tokens_per_step / dt
        rec: dict[str, Any] = {
            "step": step,
            "train_loss": self.last_loss,
            "lr": out.lr,
            "grad_norm": float(out.grad_norm),
            "tok_per_s": tok_s,
            "ms_per_step": 1000.0 * dt / max(n_steps, 1),
            "tokens": self.state.tokens,
            "elapsed": s.elapsed(),
        }
        if s.peak and s.flops_per_token:
            rec["mfu"] = tok_s * s.flops_per_token / s.peak
        if s.device.type == "cuda":
            rec["max_mem_gb"] = torch.cuda.max_memory_allocated(s.device) / 2**30
        if self._new_state_bytes:  # once, per process
            rec["state_bytes"] = self.state_bytes["total"] if self.state_bytes else None
            self._new_state_bytes = False
        if self.state.skipped_steps:
            rec["skipped"] = self.state.skipped_steps
        if self.diverged:
            rec["diverged"] = True
        rec["eta_s"] = (s.cfg.train.max_steps - step) * dt / max(n_steps, 1)
        self.logger.train_step(rec)

    # --- evaluation and samples ---------------------------------------------------------------

    def evaluate(self, step: int) -> bool:
        """Evaluate the fixed val batches; True when early stopping says stop."""
        s, st = self.s, self.state
        # FSDP: rank 0 evaluates all val batches on the gathered model; the others add zeros
        model = (
            fsdp.gather_model(s.raw_model, s.cfg, s.device, s.info.is_main)
            if s.fsdp
            else s.raw_model
        )
        batches = s.val_batches if model is not None else ()
        if s.probed_micro_batch:  # the same val windows, in pieces that fit
            batches = mf.split_batches(batches, s.probed_micro_batch)
        sums = (
            evaluate_batches(model, batches, s.device, s.dtype)
            if model is not None
            else ({"nats": 0.0, "tokens": 0, "correct": 0})
        )
        nats, count, correct = dd.all_reduce_sum(
            [sums["nats"], sums["tokens"], sums["correct"]], s.info, s.device
        )
        bpt = s.bytes_per_token
        m = summarize(  # an empty val share still yields a record, as loss 0
            {"nats": nats, "tokens": max(count, 1), "correct": correct},
            count * bpt if bpt else None,
        )
        val = st.last_val = m["val_loss"]
        c = s.cfg.train
        if val < st.best_val - c.min_delta:
            st.best_val, st.best_step, st.evals_since_best = val, step, 0
        else:
            st.evals_since_best += 1
        if self.logger is not None:
            rec = {k: m[k] for k in ("val_loss", "perplexity", "accuracy")}
            if m["bits_per_byte"] is not None:
                rec["bits_per_byte"] = m["bits_per_byte"]
            self.logger.write({"step": step, **rec, "elapsed": s.elapsed()})
            self.logger.print(
                f"step {step} | val loss {val:.4f} | best {st.best_val:.4f} (step {st.best_step})"
            )
            self.write_samples(step, val, model)
        return bool(c.patience) and st.evals_since_best >= c.patience

    def write_samples(self, step: int, val: float, model: torch.nn.Module) -> None:
        s, e = self.s, self.s.cfg.eval
        if self.tokenizer is None or e.samples == 0:
            return
        # a batch source that needs more than a start token (encoder-decoder sources)
        custom = getattr(s.data, "samples", None)
        if custom is not None:
            texts = custom(model, self.tokenizer, e.samples, e.sample_tokens, s.device)
        else:
            eot = s.meta.get("eot_id")
            start = int(eot) if eot is not None else 0
            seed = s.cfg.train.seed + step
            texts = unconditional_samples(
                model, self.tokenizer, e.samples, e.sample_tokens, start, seed
            )
        parts = [f"## step {step} (val loss {val:.4f})\n"]
        for i, text in enumerate(texts):
            parts.append(f"### sample {i + 1}\n\n```\n{text.replace('```', '` ` `')}\n```\n")
        with open_append(s.run_dir / "samples.md") as f:  # never through a link in the run folder
            f.write("\n".join(parts) + "\n")

    # --- checkpoints and the end ----------------------------------------------------------------

    def checkpoint(self, step: int, collective: bool = True) -> None:
        s, st = self.s, self.state
        rngs = dd.gather_objects(ck.rng_state(), s.info) if collective else [ck.rng_state()]
        model, optimizer = s.raw_model, s.optimizer
        if s.fsdp:  # gather the shards into one ordinary checkpoint (a collective)
            if not collective:
                s.say("FSDP: no checkpoint without the other ranks; the last saved one stands")
                return
            model, optimizer = fsdp.gather_for_checkpoint(
                s.raw_model, s.optimizer, s.cfg, s.info.is_main
            )
        if not s.info.is_main:
            return
        # the best checkpoint is judged by the most recent val loss at save time
        best = st.best_checkpoint
        if st.last_val is not None and (best["val_loss"] is None or st.last_val < best["val_loss"]):
            st.best_checkpoint = {"step": step, "val_loss": st.last_val}
        st.loader = s.loader.state_dict()
        st.rng = rngs
        st.spike_history = list(self.guard.history)
        st.elapsed_s = s.elapsed()
        st.world_size, st.global_batch = s.info.world, s.global_batch
        ck.save_checkpoint(
            s.ckpt_root,
            step,
            model,
            optimizer,
            s.scaler,
            st.state_dict(),
            s.cfg,
            keep=s.cfg.train.keep_checkpoints,
            best_step=st.best_checkpoint["step"],
        )
        if st.best_checkpoint["step"] is not None:
            name = ck.checkpoint_name(st.best_checkpoint["step"])
            atomic_write_text(s.ckpt_root / "best", name + "\n")

    def finish(self, stop_reason: str) -> TrainResult:
        s, st = self.s, self.state
        loss = self.last_loss
        result = TrainResult(
            run_dir=str(s.run_dir),
            steps=st.step,
            tokens=st.tokens,
            final_train_loss=loss if loss is not None and math.isfinite(loss) else None,
            final_val_loss=st.last_val,
            best_val_loss=st.best_val if math.isfinite(st.best_val) else None,
            best_step=st.best_step,
            wall_time_s=s.elapsed(),
            diverged=self.diverged,
            stop_reason=stop_reason,
            skipped_steps=st.skipped_steps,
            params=s.n_params,
        )
        if self.logger is not None:
            self.logger.close()
            write_json(s.run_dir / "result.json", result.as_dict())
            if stop_reason != "interrupted":
                self._report(result)
                msg = f"done: {stop_reason} at step {st.step}"
                if st.last_val is not None:
                    msg += f", val loss {st.last_val:.4f} (best {st.best_val:.4f} at step {st.best_step})"
                s.say(msg + f", {result.wall_time_s:.1f}s")
        return result

    def _report(self, result: TrainResult) -> None:
        """report.md and loss.png from what the run wrote (lmlab.report)."""

        try:
            write_report(self.s.run_dir, {"Result": result.table()})
        except (OSError, ValueError, ImportError) as e:  # the run itself is complete and saved
            self.s.say(f"warning: could not write {self.s.run_dir / 'report.md'}: {e}")
