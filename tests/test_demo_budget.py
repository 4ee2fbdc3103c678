"""`lmlab demo --minutes M` ends within M plus 15%, whatever the machine's speed.

The finish (final evaluation, samples, syntax check, report) is sized to the time left. The
end-to-end test runs the demo's own sequencing on a fake clock, with its costly stages replaced
by stand-ins that advance the clock as a machine 1x or 3x slower than its measurement would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmlab import demo, demo_budget


class FakeClock:
    def __init__(self, start: float = 100.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_budget_counts_down_on_its_clock():
    clock = FakeClock()
    b = demo_budget.Budget(60.0, clock)
    clock.now += 45.0
    assert b.left() == pytest.approx(15.0) and b.elapsed() == pytest.approx(45.0)


def test_finish_reserve_is_bounded_by_the_budget():
    assert demo_budget.finish_reserve(300.0) == demo_budget.FINISH_RESERVE_S
    assert demo_budget.finish_reserve(60.0) == pytest.approx(15.0)
    assert demo_budget.finish_reserve(300.0, step_s=14.0) == pytest.approx(
        demo_budget.FINISH_MIN_STEPS * 14.0
    )  # a slow machine
    # the final evaluation's estimate on top of the samples' and syntax check's share
    assert demo_budget.finish_reserve(300.0, eval_s=40.0) == pytest.approx(
        demo_budget.SYNTAX_RESERVE_S + 40.0
    )
    assert demo_budget.finish_reserve(300.0, eval_s=90.0) == pytest.approx(
        75.0
    )  # a quarter at most


def test_eval_and_syntax_are_sized_to_the_time_left():
    assert demo_budget.eval_batches_for(10.0, 0.5, whole=100) == 20
    assert demo_budget.eval_batches_for(100.0, 0.5, whole=100) is None  # the whole split fits
    assert demo_budget.eval_batches_for(0.0, 0.5, whole=100) == 1  # always at least one batch
    assert demo_budget.syntax_samples_for(30.0, 0.5, wanted=100) == 60
    assert demo_budget.syntax_samples_for(300.0, 0.5, wanted=100) == 100
    assert demo_budget.syntax_samples_for(-5.0, 0.5, wanted=100) == 0
    # 25 rows a batch, each row past the first costing a fifth of one: 100 = 4 x 5.8 units
    assert demo_budget.ROW_EXTRA == 0.2
    assert demo_budget.syntax_samples_for(11.7, 0.5, wanted=100, rows=25) == 100  # 11.6 s
    assert demo_budget.syntax_samples_for(11.55, 0.5, wanted=100, rows=25) == 99  # 3 x 5.8 + 5.6
    assert demo_budget.syntax_samples_for(5.75, 0.5, wanted=100, rows=25) == 49  # 5.8 + 5.6
    assert demo_budget.syntax_samples_for(0.5, 0.5, wanted=100, rows=25) == 1


def test_the_syntax_reserve_plans_every_wanted_completion_at_a_measured_pace():
    """Stop 33's 2 Zen 4 cores decoded the demo's width-192 model at 3.2 ms a token one row
    at a time: the syntax check's share of the reserve (all but the report and two samples of
    160 tokens) plans all 100 completions, SYNTAX_ROWS at a time (20 s planned 86)."""
    token_s = 3.2e-3
    samples_s = 2 * 160 * token_s
    share = demo_budget.SYNTAX_RESERVE_S - demo_budget.REPORT_S - samples_s
    rows = demo_budget.SYNTAX_ROWS
    assert demo_budget.syntax_samples_for(share, 256 * token_s, wanted=100, rows=rows) == 100


def test_syntax_waves_make_up_a_pessimistic_first_plan():
    """The first wave is planned at the worst case measured from the samples (here 4x what the
    completions really take: they end early); the next waves go at the pace seen, so the
    check runs all it wants within the time instead of a quarter of it."""
    from lmlab.eval.code import syntax_pass_rate

    clock = FakeClock()
    budget = demo_budget.Budget(30.0, clock)
    real_s = 0.25  # one completion, decoded alone; the rows of a batch cost as the plan says
    waves = demo_budget.SyntaxWaves(budget, 3.0, 4.0, wanted=100, rows=25)

    def generate(batch, max_new_tokens):
        rows = demo_budget.SYNTAX_ROWS
        clock.now += real_s * sum(
            1 + demo_budget.ROW_EXTRA * (len(batch[lo : lo + rows]) - 1)
            for lo in range(0, len(batch), rows)
        )
        return [("    return 1\n", True)] * len(batch)

    report = syntax_pass_rate(
        generate, [f"def f{i}():\n" for i in range(40)], n=100, batch_size=waves
    )
    first = demo_budget.syntax_samples_for(27.0, 4.0, 100, rows=25)
    assert waves.waves[0] == first == 25  # alone, the first plan runs a quarter
    assert report["n"] == 100 and report["not_run"] == 0 and len(waves.waves) > 1
    assert budget.left() >= 3.0  # within the time, the report's share kept


def test_syntax_waves_stop_when_no_time_is_left():
    clock = FakeClock()
    budget = demo_budget.Budget(10.0, clock)
    waves = demo_budget.SyntaxWaves(budget, 3.0, 2.0, wanted=100, rows=25)
    assert waves(0) == 13  # 1 + 12 x 0.2 units of 2 s fit the 7 s
    clock.now += 7.0  # the wave took what was planned
    assert waves(13) == 0 and waves.waves == [13]


def test_training_share_is_a_hard_stop():
    from lmlab.config import load_config

    cfg = load_config("demo-python")
    demo_budget.fit_steps(cfg, 120.0, 0.5)
    assert cfg.train.max_minutes * 60.0 == pytest.approx(120.0)  # no slack past its share
    assert cfg.train.max_steps == int(120.0 / (0.5 * 1.08))
    assert cfg.eval.batches == 10  # the recipe's: 5 evals x 10 batches x 1/3 step < 8% of 222 steps
    demo_budget.fit_steps(cfg, 10.0, 0.5)
    assert cfg.train.max_steps == 18 and cfg.eval.batches == 1  # a short run evaluates less
    assert cfg.eval.samples == 0  # and writes no samples while training


class SlowMachine:
    """Stand-ins for the demo's costly stages that advance a fake clock, on a machine
    ``slowdown`` times slower than its own measurement said (it got loaded after measuring)."""

    def __init__(
        self,
        clock: FakeClock,
        step_s: float,
        slowdown: float,
        startup_s: float = 5.0,
        finish_slowdown: float = 1.0,
    ):
        self.clock, self.step_s, self.slow, self.startup_s = clock, step_s, slowdown, startup_s
        # how much slower still the machine gets after training (loaded after the demo sized
        # its finish from the speeds it had just measured)
        self.finish_slow = finish_slowdown
        self.eval_batches = "not called"
        self.eval_done = 0
        self.completions = 0
        self.whole = 0  # val batches in the whole split

    def measure(self, cfg, max_seconds=float("inf")):
        self.clock.now += (demo.TIMING_STEPS + 1) * self.step_s
        return self.step_s

    def train(self, cfg, resume=False, force=False):
        from types import SimpleNamespace

        t0 = self.clock.now
        self.clock.now += self.startup_s
        real_step = self.step_s * self.slow
        budget = cfg.train.max_minutes * 60.0
        steps = 0
        while (
            steps < cfg.train.max_steps and self.clock.now - t0 < budget
        ):  # the loop's time_budget stop
            self.clock.now += real_step
            steps += 1
        return SimpleNamespace(
            steps=steps,
            tokens=steps,
            params=1,
            wall_time_s=self.clock.now - t0,
            stop_reason="time_budget",
        )

    def evaluate(self, run, batches=None, stop=None, **kw):
        self.eval_batches = batches
        n = batches if batches is not None else self.whole
        for i in range(n):  # as evaluate_batches: the deadline is asked between batches
            if i and stop is not None and stop():
                break
            self.clock.now += self.step_s * self.slow * self.finish_slow / 3.0
            self.eval_done = i + 1
        stopped = self.eval_done < n
        return {
            "whole_split": batches is None and not stopped,
            "batches": self.eval_done,
            "stopped": stopped,
            "val_loss": 3.0,
            "perplexity": 20.0,
            "accuracy": 0.1,
            "bits_per_byte": 2.0,
            "tokens": n,
        }

    def generate(self, model, tok, prompt, max_new_tokens=1, num_samples=1, **kw):
        from types import SimpleNamespace

        self.completions += num_samples
        for _ in range(max_new_tokens):
            self.clock.now += self.step_s * self.slow * self.finish_slow / 20.0  # a decode step
            if kw.get("stream_callback"):
                kw["stream_callback"](0, "x")
        return [
            SimpleNamespace(
                text="x" * max_new_tokens, tokens=[1] * max_new_tokens, finish_reason="length"
            )
            for _ in range(num_samples)
        ]

    def generate_rows(self, model, tok, prompts, max_new_tokens=1, **kw):
        """One batch of rows, whatever their prompts: each row past the first costs
        ROW_EXTRA of one (lmlab.demo_budget), every row to the token limit."""
        from types import SimpleNamespace

        self.completions += len(prompts)
        step = self.step_s * self.slow * self.finish_slow / 20.0  # a decode step of one row
        self.clock.now += (1 + demo_budget.ROW_EXTRA * (len(prompts) - 1)) * max_new_tokens * step
        return [SimpleNamespace(text="x" * max_new_tokens, finish_reason="length") for _ in prompts]


def _demo_on(
    machine: SlowMachine, minutes: float, out: Path, monkeypatch, extra: tuple[str, ...] = ()
) -> dict:
    """run_demo on a prepared demo folder ``out`` with ``machine``'s stand-ins (and the
    overrides ``extra`` after DEMO_OVERRIDES)."""
    from lmlab.config import load_config
    from lmlab.tokenizer import load_tokenizer

    cfg = load_config("demo-python")
    val_tokens = json.loads((out / "data" / "meta.json").read_text())["splits"]["val"]["tokens"]
    machine.whole = machine.whole or -(
        -val_tokens // (cfg.train.batch_size * cfg.model.context_length)
    )  # as the demo counts
    tok = load_tokenizer(out / "tokenizer")
    monkeypatch.setattr(demo, "measure_step_seconds", machine.measure)
    monkeypatch.setattr(demo, "final_eval_batch_seconds", lambda cfg, step_s: step_s / 3.0)
    # the demo's collaborators, replaced where the demo looks them up
    monkeypatch.setattr(demo, "train", machine.train)
    monkeypatch.setattr(demo, "evaluate_path", machine.evaluate)
    monkeypatch.setattr(demo, "generate", machine.generate)
    monkeypatch.setattr(demo, "generate_healed_rows", machine.generate_rows)
    monkeypatch.setattr(demo, "load_model_for_inference", lambda *a, **k: (None, None, tok))
    monkeypatch.setattr(demo, "write_report", lambda run, **k: run / "report.md")
    return demo.run_demo(
        minutes=minutes, out=out, overrides=[*DEMO_OVERRIDES, *extra], clock=machine.clock
    )


DEMO_OVERRIDES = [
    "tokenizer.input=@stdlib/json",
    "prepare.input=@stdlib/json",
    "prepare.val_fraction=0.2",
    "tokenizer.vocab_size=300",
    "log.progress=false",
]


@pytest.fixture(scope="module")
def prepared_demo(tmp_path_factory) -> Path:
    """A demo folder whose tokenizer and data are up to date (made for real, once)."""
    from lmlab.config import load_config
    from lmlab.outputs import write_marker
    from lmlab.pipeline import resolve_training_inputs

    out = tmp_path_factory.mktemp("prepared") / "demo"
    write_marker(out, "demo")  # as an earlier demo into this folder left it
    resolve_training_inputs(
        load_config(
            "demo-python",
            [f"tokenizer.out={out / 'tokenizer'}", f"prepare.out={out / 'data'}", *DEMO_OVERRIDES],
        ),
        log=lambda m: None,
    )
    return out


@pytest.mark.parametrize("finish_slowdown", [3.0, 10.0])
def test_a_machine_that_slows_after_training_still_ends_in_its_budget(
    finish_slowdown, prepared_demo, tmp_path, monkeypatch
):
    """The finish is sized from speeds measured just before it; a load that starts then makes
    evaluation and decoding several times slower: both stop at their deadlines, and the
    report says what was left out."""
    out = tmp_path / "demo"
    shutil.copytree(prepared_demo, out)
    machine = SlowMachine(FakeClock(), step_s=0.5, slowdown=1.0, finish_slowdown=finish_slowdown)
    machine.whole = 10_000  # the val batches the time allows are a sample of a large split
    res = _demo_on(machine, 4.0, out, monkeypatch)
    assert res["wall_time_s"] <= 4.0 * 60.0 * 1.05, res
    planned = machine.eval_batches if machine.eval_batches is not None else machine.whole
    assert res["eval_stopped"] and machine.eval_done < planned  # stopped at its deadline


@pytest.mark.parametrize("step_s", [0.5, 4.0])
@pytest.mark.parametrize("slowdown", [1.0, 3.0])
@pytest.mark.parametrize("minutes", [1.0, 4.0])
def test_demo_on_a_slow_machine_keeps_its_budget(
    minutes, slowdown, step_s, prepared_demo, tmp_path, monkeypatch
):
    out = tmp_path / "demo"
    shutil.copytree(prepared_demo, out)  # the demo finds its tokenizer and data up to date
    clock = FakeClock()
    machine = SlowMachine(clock, step_s=step_s, slowdown=slowdown)
    res = _demo_on(machine, minutes, out, monkeypatch)
    assert res["wall_time_s"] <= minutes * 60.0 * 1.15, res
    assert res["wall_time_s"] == pytest.approx(clock.now - FakeClock().now)
    assert machine.eval_batches != "not called"
    if slowdown == 1.0 and minutes == 4.0 and step_s == 0.5:
        assert res["syntax_samples"] > 0  # time was left for the syntax check


def tiny_demo_config(*extra: str, vocab: int = 64):
    """The demo-python recipe shrunk to a 1-layer width-32 model on the CPU (for timing tests)."""
    from lmlab.config import load_config

    return load_config(
        "demo-python",
        [
            "model.n_layer=1",
            "model.d_model=32",
            "model.n_head=2",
            "model.context_length=16",
            f"model.vocab_size={vocab}",
            "train.batch_size=2",
            "eval.batch_size=2",
            "train.device=cpu",
            *extra,
        ],
    )


def test_the_final_eval_is_sized_at_float32_speed_when_training_runs_in_bf16(monkeypatch):
    """On a CPU the final evaluation runs in float32 whatever training used; a batch is a
    third of the step scaled by the measured float32 / bf16 pass times."""
    import torch

    cfg = tiny_demo_config()
    times = {"float32": 0.3, "bfloat16": 0.2}
    monkeypatch.setattr(
        demo, "pick_cpu_train_dtype", lambda *a: {"dtype": "bfloat16", "seconds_per_pass": times}
    )
    monkeypatch.setattr(demo, "_training_dtype", lambda *a: torch.bfloat16)
    assert demo.final_eval_batch_seconds(cfg, 0.6) == pytest.approx(0.2 * 1.5)
    monkeypatch.setattr(demo, "_training_dtype", lambda *a: torch.float32)
    assert demo.final_eval_batch_seconds(cfg, 0.6) == pytest.approx(0.2)


def test_the_final_eval_batch_is_sized_by_its_own_tokens():
    """The recipe evaluates batches of 16 and trains on 8: an eval batch is two thirds of a
    step, not one (sized at a third, the demo's syntax check got 6 s of its 30)."""
    from lmlab.config import load_config

    cfg = load_config(
        "demo-python", ["train.device=cpu", "train.dtype=float32", "model.vocab_size=64"]
    )
    assert (cfg.train.batch_size, cfg.eval_batch_size) == (8, 16)
    assert demo.final_eval_batch_seconds(cfg, 0.6) == pytest.approx(0.4)
    cfg.eval.batch_size = 8
    assert demo.final_eval_batch_seconds(cfg, 0.6) == pytest.approx(0.2)


def test_step_measurement_stops_early_on_a_slow_machine(monkeypatch):
    """Past max_seconds the measurement ends after the warm-up and one timed step."""
    cfg = tiny_demo_config(
        "train.dtype=float32"  # no precision probe: every clock read here is a timed step's
    )
    ticks = iter(range(0, 1000, 10))  # every perf_counter() call: 10 s later
    monkeypatch.setattr(demo.time, "perf_counter", lambda: float(next(ticks)))
    assert demo.measure_step_seconds(cfg, max_seconds=15.0) == 10.0
    assert next(ticks) == 40  # warm-up and one step timed (4 clock reads), no more


@pytest.mark.parametrize("picked", ["bfloat16", "float32"])
def test_step_is_measured_in_the_precision_training_picks(picked, monkeypatch):
    """train.dtype = auto on a CPU: the demo sizes its run by a step in the dtype the trainer
    will pick (bf16 steps were measured in fp32 before, and a run sized for 655 ms/step took 330)."""
    import torch

    monkeypatch.setattr(demo, "pick_cpu_train_dtype", lambda *a, **k: {"dtype": picked})
    cfg = tiny_demo_config()
    assert cfg.train.dtype == "auto"
    seen = []
    import lmlab.model

    real_build = lmlab.model.build_model

    def build(mcfg):
        model = real_build(mcfg)
        model.register_forward_hook(
            lambda m, i, o: seen.append(
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            )
        )
        return model

    monkeypatch.setattr(demo, "build_model", build)  # what measure_step_seconds calls
    demo.measure_step_seconds(cfg)
    want = torch.bfloat16 if picked == "bfloat16" else None
    assert seen and all(d == want for d in seen)


def test_the_default_budget_is_the_five_minutes_the_readme_promises():
    """Issue 12: the demo runs in a 5-minute budget; `lmlab demo` and run_demo agree on it."""
    import inspect

    from lmlab.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.minutes == demo.DEFAULT_MINUTES == 5.0
    assert inspect.signature(demo.run_demo).parameters["minutes"].default == 5.0


def test_a_machine_too_slow_for_the_reserve_trains_one_step_and_says_a_positive_time(
    monkeypatch, capsys
):
    from lmlab.config import load_config

    cfg = load_config("demo-python")
    clock = FakeClock()
    budget = demo_budget.Budget(300.0, clock)
    # measuring takes 30 s, and at 50 s a step the finish keeps FINISH_MIN_STEPS x 50 s > what is left
    monkeypatch.setattr(
        demo,
        "measure_step_seconds",
        lambda *a, **k: setattr(clock, "now", clock.now + 30.0) or 50.0,
    )
    monkeypatch.setattr(demo, "final_eval_batch_seconds", lambda cfg, step_s: step_s / 3.0)
    assert demo_budget.finish_reserve(300.0, 50.0) > 270.0
    demo._size_training(cfg, budget, 5.0, whole=10)
    out = capsys.readouterr().out
    assert cfg.train.max_steps == 1
    assert "steps in ~0.0 min" in out and "~-" not in out


def test_the_syntax_check_stops_between_batches_at_its_deadline(monkeypatch):
    """make_generate_fn decodes ``rows`` completions at a time whatever their prompts, and asks
    ``stop`` before each batch after the first; the completions it did not reach come back as
    None, which syntax_pass_rate leaves out."""
    from types import SimpleNamespace

    decoded = []

    def fake_rows(model, tok, prompts, stop_when=None, **kw):
        decoded.append(list(prompts))
        assert stop_when is not None and not stop_when(0, "    return 1\n")
        assert stop_when(0, "    return 1\nx = 2")  # a top-level statement: the body ended
        return [SimpleNamespace(text=" x", finish_reason="eot")] * len(prompts)

    monkeypatch.setattr(demo, "generate_healed_rows", fake_rows)
    asked = []
    fn = demo.make_generate_fn(None, None, stop=lambda: asked.append(1) or len(asked) >= 2, rows=2)
    out = fn(["def a():\n", "def b():\n", "def a():\n", "def c():\n", "def b():\n"], 4)
    assert decoded == [["def a():\n", "def b():\n"], ["def a():\n", "def c():\n"]]
    assert out == [(" x", True)] * 4 + [None]  # the deadline, before the third batch
    assert demo.make_generate_fn(None, None, rows=25)(["a", "c"], 4) == [(" x", True)] * 2


def test_a_prompt_met_again_in_a_later_call_gets_new_samples(monkeypatch):
    """The syntax check's waves call make_generate_fn's function again on the same prompts:
    each batch draws with its own seed, so a wave repeats no earlier completion."""
    from types import SimpleNamespace

    seeds = []

    def fake_rows(model, tok, prompts, seed=0, **kw):
        seeds.append((list(prompts), seed))
        return [SimpleNamespace(text=" x", finish_reason="eot")] * len(prompts)

    monkeypatch.setattr(demo, "generate_healed_rows", fake_rows)
    fn = demo.make_generate_fn(None, None, seed=5, rows=25)
    fn(["a", "b"], 4)
    fn(["a", "b"], 4)
    assert seeds == [(["a", "b"], 5), (["a", "b"], 6)]


@pytest.mark.parametrize("vocab,fused", [(64, False), (2048, True)])
def test_step_is_measured_as_training_runs_it(vocab, fused, monkeypatch):
    """The timed step uses the trainer's loss path (the fused head from FUSED_LOSS_MIN_VOCAB
    on) and its allocator settings: without them a demo step measured 385 ms where training
    ran at 305, and the demo ended a minute early."""
    cfg = tiny_demo_config("train.dtype=float32", vocab=vocab)
    retained, targets = [], []
    monkeypatch.setattr(demo, "retain_freed_memory", lambda: retained.append(1))
    import lmlab.model

    real_build = lmlab.model.build_model

    def build(mcfg):
        model = real_build(mcfg)
        model.register_forward_pre_hook(
            lambda m, a, kw: targets.append(kw.get("targets") is not None), with_kwargs=True
        )
        return model

    monkeypatch.setattr(demo, "build_model", build)
    demo.measure_step_seconds(cfg)
    assert retained and targets and all(t == fused for t in targets)


@pytest.mark.parametrize(
    ("d_model", "n_head", "tokens", "expected"),
    [
        (192, 4, "short", 128),  # a short budget: the narrower width
        (192, 4, "limit", None),  # the largest budget measured: the recipe's width kept
        (128, 4, "short", None),  # already that narrow
        (96, 4, "short", None),  # narrower still: never widened
        (192, 6, "short", None),  # 128 does not split into 6 heads
        (256, 32, "short", 128),  # 32 heads of 4
        (256, 128, "short", None),  # heads of 1: rotary positions need an even head dimension
    ],
)
@pytest.mark.parametrize("batch", [8, 16])
def test_width_for_budget(d_model, n_head, tokens, expected, batch):
    """The limit is in tokens: a batch half as large fits twice the steps under it."""
    from lmlab.config import load_config

    cfg = load_config(
        "demo-python",
        [f"model.d_model={d_model}", f"model.n_head={n_head}", f"train.batch_size={batch}"],
    )
    limit = demo_budget.SHORT_BUDGET_TOKENS // (batch * cfg.model.context_length)
    steps = limit - 1 if tokens == "short" else limit
    assert demo_budget.width_for_budget(cfg, steps) == expected


def test_a_budget_of_2m_tokens_keeps_width_192():
    """At ~1000 steps of 8 x 256 (what a Zen 4 with bf16 fits) width 192 wrote better code
    than width 128 in both seeds measured (bench/RESULTS.md "stop 34"); at 350 steps of
    16 x 256 width 128 was far ahead ("stop 29"): the limit sits between."""
    from lmlab.config import load_config

    cfg = load_config("demo-python")
    assert (cfg.model.d_model, cfg.train.batch_size) == (192, 8)
    assert demo_budget.width_for_budget(cfg, 960) is None
    assert demo_budget.width_for_budget(cfg, 350 * 16 // 8) == 128


def _width_priced(clock: FakeClock, seconds_by_width: dict[int, float]):
    """measure_step_seconds on a fake machine whose step time depends on the model's width."""
    measured: list[int] = []

    def measure(cfg, max_seconds=float("inf")):
        step_s = seconds_by_width[cfg.model.d_model]
        measured.append(cfg.model.d_model)
        clock.now += (demo.TIMING_STEPS + 1) * step_s
        return step_s

    return measure, measured


@pytest.mark.parametrize(
    ("choose_width", "narrow_s", "width"),
    [(True, 0.57, 128), (True, 0.8, 128), (True, 0.9, 192), (False, 0.57, 192)],
)
def test_a_short_budget_trains_the_narrower_width_when_its_step_pays(
    choose_width, narrow_s, width, monkeypatch, capsys
):
    """Width 192 at 1.0 s a step fits ~240 steps of 300 s. Width 128 measured at 0.57 s (at
    most SHORT_BUDGET_STEP_RATIO of it) is trained instead, its steps fitted to its own step
    (~1.75x as many); at 0.9 s it does not pay, and width 192 is refitted for the time its
    measurement took. With choose_width False (a model.* override) width 128 is not tried."""
    from lmlab.config import load_config

    cfg = load_config("demo-python")
    warmup = cfg.train.warmup_steps
    clock = FakeClock()
    measure, measured = _width_priced(clock, {192: 1.0, 128: narrow_s})
    monkeypatch.setattr(demo, "measure_step_seconds", measure)
    monkeypatch.setattr(demo, "final_eval_batch_seconds", lambda cfg, step_s: step_s / 3.0)
    step_s, _ = demo._size_training(
        cfg, demo_budget.Budget(300.0, clock), 5.0, whole=10, choose_width=choose_width
    )
    wide_steps = int((300.0 - 35.0 - 4.0) / 1.08)  # as fit_steps counts, after the reserve
    assert measured == ([192, 128] if choose_width else [192])
    assert cfg.model.d_model == width and step_s == (narrow_s if width == 128 else 1.0)
    if width == 128:
        # its own step's count, less the time the second measurement took
        assert cfg.train.max_steps == pytest.approx(
            (wide_steps - 4 * narrow_s / 1.08) / narrow_s, abs=2
        )
        # fitted from the recipe's values, not from width 192's fit (warmup 10% of its steps)
        assert cfg.train.warmup_steps == min(warmup, cfg.train.max_steps // 10)
    elif choose_width:  # the narrow measurement's 4 x 0.9 s came out of training's time
        assert cfg.train.max_steps == pytest.approx(wide_steps - 3.6 / 1.08, abs=2)
    else:
        assert cfg.train.max_steps == pytest.approx(wide_steps, abs=2)
    if choose_width:
        assert (
            "training it" if width == 128 else "keeping the recipe's"
        ) in capsys.readouterr().out


def test_a_long_budget_keeps_the_recipes_width(monkeypatch):
    from lmlab.config import load_config

    cfg = load_config("demo-python")
    clock = FakeClock()
    measure, measured = _width_priced(clock, {192: 0.1, 128: 0.057})
    monkeypatch.setattr(demo, "measure_step_seconds", measure)
    monkeypatch.setattr(demo, "final_eval_batch_seconds", lambda cfg, step_s: step_s / 3.0)
    demo._size_training(cfg, demo_budget.Budget(300.0, clock), 5.0, whole=10)
    assert measured == [192] and cfg.model.d_model == 192
    tokens = cfg.train.max_steps * cfg.train.batch_size * cfg.model.context_length
    assert tokens >= demo_budget.SHORT_BUDGET_TOKENS


@pytest.mark.parametrize(
    ("overrides", "width"), [([], 128), (["--model.d_model=160"], 160), (["model.n_layer=3"], 192)]
)
def test_the_demo_keeps_a_model_the_user_shaped(
    overrides, width, prepared_demo, tmp_path, monkeypatch
):
    """Any model.* override is the user's model: the demo trains it as given, however short
    its budget; without one a short budget trains the narrower width."""
    out = tmp_path / "demo"
    shutil.copytree(prepared_demo, out)
    machine = SlowMachine(FakeClock(), step_s=1.0, slowdown=1.0)
    machine.measure, _ = _width_priced(machine.clock, {192: 1.0, 160: 0.8, 128: 0.57})
    trained: list[int] = []
    real_train = machine.train
    monkeypatch.setattr(
        machine, "train", lambda cfg, **k: trained.append(cfg.model.d_model) or real_train(cfg, **k)
    )
    _demo_on(machine, 5.0, out, monkeypatch, extra=tuple(overrides))
    assert trained == [width]


def test_a_short_budget_trains_the_embedding_at_the_higher_rate():
    """Under 1000 planned steps the AdamW side (tied embedding, norm gains) trains at 3.2e-2:
    at ~600 steps it ended 0.3 lower with 24-38% of completions compiling against 3-12%; at
    ~900 the two draw level (20% / 12%, 28% / 31% in two seeds), at ~1300 the recipe's 2e-3
    wrote 48-56% against 18-30% (bench/RESULTS.md "stop 33")."""
    from lmlab.config import load_config

    cfg = load_config("demo-python")
    assert (cfg.train.lr, cfg.train.min_lr) == (2e-3, 2e-4)
    cfg.train.max_steps = 600
    assert demo_budget.lr_for_budget(cfg) is None  # width 192: measured only at 128
    cfg.model.d_model = demo_budget.SHORT_BUDGET_WIDTH
    lr, min_lr = demo_budget.lr_for_budget(cfg)
    assert lr == demo_budget.SHORT_BUDGET_LR == 3.2e-2
    assert min_lr == pytest.approx(3.2e-3)  # a tenth, as the recipe's: Muon's schedule unchanged
    cfg.train.max_steps = 1300
    assert demo_budget.lr_for_budget(cfg) is None
    cfg.train.max_steps = 600
    cfg.optim.name = "adamw"  # the rule is about the AdamW side under Muon only
    assert demo_budget.lr_for_budget(cfg) is None


@pytest.mark.parametrize(
    ("step_s", "overrides", "lr"),
    [(1.0, [], 3.2e-2), (0.05, [], 2e-3), (1.0, ["train.lr=1e-3"], 1e-3)],
    ids=["short", "long", "user's"],
)
def test_the_demo_raises_the_rate_only_for_a_short_budget_the_user_left_alone(
    step_s, overrides, lr, prepared_demo, tmp_path, monkeypatch
):
    out = tmp_path / "demo"
    shutil.copytree(prepared_demo, out)
    machine = SlowMachine(FakeClock(), step_s=step_s, slowdown=1.0)
    # width 128 steps in 0.57x width 192's time, so a short budget trains it (the lr's width)
    machine.measure, _ = _width_priced(machine.clock, {192: step_s, 128: 0.57 * step_s})
    trained: list[tuple[int, float, float]] = []
    real_train = machine.train
    monkeypatch.setattr(
        machine,
        "train",
        lambda cfg, **k: (
            trained.append((cfg.train.max_steps, cfg.train.lr, cfg.train.min_lr))
            or real_train(cfg, **k)
        ),
    )
    _demo_on(machine, 5.0, out, monkeypatch, extra=tuple(overrides))
    steps, got, got_min = trained[0]
    assert (steps < demo_budget.SHORT_BUDGET_LR_STEPS) == (step_s == 1.0)
    assert got == lr and got_min == pytest.approx(lr / 10 if not overrides else 2e-4)
