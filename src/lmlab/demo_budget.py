"""The demo's time budget: what training, the final evaluation and the syntax check each get.

Pure arithmetic on measured speeds (lmlab.demo measures them), kept apart so the sizing can be
read, and tested on a fake clock, on its own.
"""

from __future__ import annotations

import time
from typing import Any

from lmlab.config import Config

# Seconds kept back after training for the samples, the syntax check and the report; the final
# evaluation's estimated time comes on top, and the whole reserve is at least FINISH_RESERVE_S
# and at most FINISH_RESERVE_SHARE of the budget (so a short budget still trains). The plan is
# the worst case, every completion running all SYNTAX_TOKENS at the samples' pace (1.8-2 ms a
# token one row at a time on 2 Xeon cores, 2.4 at width 128 and 3.2 at width 192 on 2 Zen 4
# cores): 30 s planned all 100 completions when each prompt's were decoded as a batch of their
# own (stop 16); 25 rows of any prompts at a time plan them in 14 s at 2.4 ms and 19 s at 3.2
# (stop 33), and 25 s keeps the report's and the samples' share besides (20 s planned 86 at
# 3.2). The later waves go at the pace the check really has (SyntaxWaves), so a slower
# machine's first plan is made up.
SYNTAX_RESERVE_S = 25.0
FINISH_RESERVE_S = 35.0
FINISH_RESERVE_SHARE = 0.25
# The final evaluation's estimate, with this margin for a machine's pace drifting.
EVAL_MARGIN = 1.25
# Of the time left after training: the final evaluation may take this share, or all but
# SYNTAX_RESERVE_S if that is more (then samples and the syntax check share what remains,
# keeping REPORT_S for the report and plot).
EVAL_SHARE = 0.4
REPORT_S = 3.0
# The syntax check decodes SYNTAX_ROWS completions at a time in one batch, whatever their
# prompts (left-padded: lmlab.sample.generate_rows), and a batch of r rows takes about
# (1 + ROW_EXTRA * (r - 1)) times one row's time. On the demo's model, 2 AMD EPYC Zen 4 cores,
# every row to 256 tokens (bench/syntax_rows.py, bench/RESULTS.md "stop 33"): batches of 5, 10,
# 25, 50 and 100 rows took 1.69, 2.83, 5.43, 11.05 and 19.1 times one row (0.17-0.21 a row past
# the first), and 100 completions 10-11.5 s from 25 rows on, against 52 s one at a time; 25
# keeps the deadline's checks (between batches) a few seconds apart.
SYNTAX_ROWS = 25
ROW_EXTRA = 0.2


class Budget:
    """A deadline on a clock (injectable for tests): ``left()`` seconds until it."""

    def __init__(self, seconds: float, clock: Any = None):
        self.clock = clock or time.monotonic
        self.start = clock()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start


# The finish's fixed costs (loading the model, one eval batch, a sample, the plot) grow with
# the machine's slowness: at least this many measured training steps are kept for them.
FINISH_MIN_STEPS = 6


def finish_reserve(budget_s: float, step_s: float = 0.0, eval_s: float = 0.0) -> float:
    """Seconds kept for the finish out of a budget of ``budget_s``, on a machine at ``step_s``
    whose final evaluation is estimated at ``eval_s``."""
    wanted = max(FINISH_RESERVE_S, SYNTAX_RESERVE_S + eval_s)
    return max(min(wanted, FINISH_RESERVE_SHARE * budget_s), FINISH_MIN_STEPS * step_s)


def eval_batches_for(seconds: float, batch_s: float, whole: int) -> int | None:
    """Val batches that fit ``seconds`` at ``batch_s`` each: None (the whole split) if all ``whole`` fit."""
    n = max(1, int(seconds / max(batch_s, 1e-9)))
    return None if n >= whole else n


def _completion_units(n: int, rows: int) -> float:
    """What ``n`` completions decoded ``rows`` at a time cost, in completions decoded alone."""
    full, rest = divmod(max(0, n), max(1, rows))
    units = full * (1 + ROW_EXTRA * (rows - 1))
    return units + (1 + ROW_EXTRA * (rest - 1) if rest else 0.0)


def syntax_samples_for(seconds: float, completion_s: float, wanted: int, rows: int = 1) -> int:
    """Completions of the syntax check that fit ``seconds``, at most ``wanted``, decoded ``rows``
    at a time (``completion_s``: one completion decoded alone)."""
    n = max(0, wanted)
    while n and _completion_units(n, rows) * completion_s > seconds:
        n -= 1
    return n


# A later wave's plan uses the pace of the wave before it, with this margin: its prompts may
# loop where the last wave's ended early (the deadline stops it if it overruns anyway).
WAVE_MARGIN = 1.25


class SyntaxWaves:
    """The syntax check's batch sizes (``syntax_pass_rate``'s ``batch_size`` callable): each
    wave as many completions as fit the time left (``budget`` less ``keep_s``), the first at
    ``completion_s`` a completion (the worst case: every one to the token limit), each later
    one at the pace the previous wave really had. A first plan that was pessimistic (a
    machine slower while it was measured, completions that end early) is made up by the next
    waves instead of leaving the time unused."""

    def __init__(
        self,
        budget: Budget,
        keep_s: float,
        completion_s: float,
        wanted: int,
        rows: int = SYNTAX_ROWS,
    ):
        self.budget, self.keep_s, self.completion_s = budget, keep_s, completion_s
        self.wanted, self.rows = wanted, rows
        self.clock = budget.clock  # the waves' pace on the deadline's own clock
        self.waves: list[int] = []
        self._last: tuple[float, float] | None = None  # (start, cost units) of the last wave

    def __call__(self, done: int) -> int:
        now = self.clock()
        if self._last is not None and self._last[1] > 0:
            start, units = self._last
            self.completion_s = WAVE_MARGIN * (now - start) / units
        n = syntax_samples_for(
            self.budget.left() - self.keep_s, self.completion_s, self.wanted - done, self.rows
        )
        self._last = (now, _completion_units(n, self.rows))
        if n:
            self.waves.append(n)
        return n


# A budget that fits fewer than SHORT_BUDGET_TOKENS training tokens at the recipe's width
# trains it at SHORT_BUDGET_WIDTH instead, when that width's step takes at most
# SHORT_BUDGET_STEP_RATIO of the recipe's (measured on the machine at hand): more, cheaper steps
# beat fewer wide ones that far from convergence. On 2 AVX2 cores (batches of 16 x 256) width
# 128 steps in 0.57-0.65x width 192's time; at budgets of 190 and 350 steps of width 192
# (0.78M and 1.43M tokens) it drew level after 1.08x and 1.15x its steps and ended 0.16-0.19
# lower in the same time (bench/RESULTS.md "Issue 12, stops 29-30"). At ~1000 steps of 8 x 256
# (2M tokens; a Zen 4 with bf16, where width 128 fits ~1500) width 192 wrote 58.8% and 48.8%
# compiling completions of the demo's check (400 each, two seeds) against width 128's 46.2%
# and 40.8%, its val loss 0.08 higher in one seed and 0.05 lower in the other ("stop 34").
# The limit sits between the two: 750 steps of the demo's 8 x 256 (1.54M tokens).
SHORT_BUDGET_TOKENS = 750 * 8 * 256
SHORT_BUDGET_WIDTH = 128
SHORT_BUDGET_STEP_RATIO = 0.8


def narrow_pays(step_ratio: float) -> bool:
    """Whether a narrow step at ``step_ratio`` of the wide one's time is cheap enough to train."""
    return step_ratio <= SHORT_BUDGET_STEP_RATIO


def width_for_budget(cfg: Config, steps: int) -> int | None:
    """The narrower width to train ``cfg`` at when its budget fits only ``steps`` steps of it
    (fewer than SHORT_BUDGET_TOKENS tokens), or None to keep the recipe's (a long budget, a
    model no wider, or a width the heads do not divide into even head dimensions, which rotary
    positions need)."""
    m = cfg.model
    tokens = steps * cfg.train.batch_size * m.context_length
    if tokens >= SHORT_BUDGET_TOKENS or m.d_model <= SHORT_BUDGET_WIDTH:
        return None
    if SHORT_BUDGET_WIDTH % m.n_head or (SHORT_BUDGET_WIDTH // m.n_head) % 2:
        return None
    return SHORT_BUDGET_WIDTH


# The AdamW side under Muon (the tied 4096-row embedding/head and the norm gains) trains at
# SHORT_BUDGET_LR, not the recipe's train.lr, when the demo's plan fits fewer than
# SHORT_BUDGET_LR_STEPS steps. Demos of width 128 (bench/RESULTS.md "stop 32", "stop 33"; the
# syntax pass rate over 100-400 completions of the demo's own check, at temperature 0.2):
# - ~600 steps: 3.2e-2 ended 0.29-0.32 lower than 2e-3 and wrote 24-38% passing completions
#   against 3-12% (Zen 3, two seeds; Zen 4, 29.8% against 6.5%): 2e-3 has not yet learned
#   to end a function;
# - ~1300 steps: 2e-3 wrote 48-56% against 3.2e-2's 18-30% (Zen 4, two seeds each; 1e-3 57%,
#   8e-3 30%), though 3.2e-2 ended 0.13-0.20 lower: at the high rate the tied embedding's
#   rows grow to 3x the norm, the logits sharpen and low-temperature completions loop.
# - ~760 steps: 3.2e-2 34.0% against 29.5%, 0.25 lower; ~900 steps, two seeds: 2e-3 19.8%
#   against 12.0% (seed 1337), 3.2e-2 30.8% against 27.8% (seed 1), 0.22-0.27 lower in both.
# So the rates draw level around 900 steps, where 3.2e-2 still ends lower, and 2e-3 is far
# ahead by 1300; the threshold sits between.
# Measured at width 128 only: a demo that keeps the recipe's width 192 trains at its 2e-3 (with
# 3.2e-2, 862 steps of width 192 wrote 14.5% of 400, and a make demo of 861 steps 10% of 100).
SHORT_BUDGET_LR = 3.2e-2
SHORT_BUDGET_LR_STEPS = 1000


def lr_for_budget(cfg: Config) -> tuple[float, float] | None:
    """(lr, min_lr) for a demo of width SHORT_BUDGET_WIDTH whose plan fits only
    ``cfg.train.max_steps`` steps: the higher AdamW rate under Muon where the budget is short
    (min_lr a tenth of it, as the recipe's, so Muon's matrices keep their schedule), or None to
    keep the recipe's."""
    t = cfg.train
    if cfg.optim.name != "muon" or t.max_steps >= SHORT_BUDGET_LR_STEPS or t.lr >= SHORT_BUDGET_LR:
        return None
    if cfg.model.d_model > SHORT_BUDGET_WIDTH:
        return None
    return SHORT_BUDGET_LR, SHORT_BUDGET_LR * t.min_lr / t.lr


def fit_steps(cfg: Config, seconds: float, step_s: float) -> None:
    """Size max_steps, warmup, eval and checkpoint intervals to a training time budget."""
    t = cfg.train
    # evals and checkpoints cost time too: count them as ~8% extra
    steps = max(1, int(seconds / (step_s * 1.08)))
    t.max_steps = steps
    t.warmup_steps = max(1, min(t.warmup_steps, steps // 10))
    t.eval_every = max(1, steps // 5)
    # five evals of eval.batches forward passes (a third of a step each) stay within that 8%
    cfg.eval.batches = max(1, min(cfg.eval.batches, int(0.08 * steps * 3 / 5)))
    # samples.md at each eval costs decoding time: one sample, and none in a short run, where
    # 5 x sample_tokens of them would cost a good part of it
    cfg.eval.samples = min(cfg.eval.samples, 1) if steps >= 100 else 0
    t.checkpoint_every = 0  # the last step's checkpoint only
    t.log_every = max(1, min(t.log_every, steps // 20))
    # a hard stop in case the machine is slower than measured (or slows down): training never
    # takes more than its share, so the finish keeps its reserve
    t.max_minutes = max(seconds, step_s) / 60.0
    # and the steps refitted at each eval to the pace training really has (a few timed steps
    # were off by up to 16% either way on a shared machine, whose pace also drifts)
    t.fit_to_time = True
