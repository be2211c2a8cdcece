"""The named experiments (conf/experiment/{scale,prompt_length,hard_vs_soft,domain_shift}.yaml): every sweep point
composes and validates; the report's plot data from hand-built result files; the domain shift's label map (rows,
refusals before loading) and one domain-shift run end to end on tiny-bert."""
import gzip
import itertools
import json

import pytest

from bench import checks
from bench.errors import ConfigError
from bench.report import experiments as ex
from bench.report.read import load_runs

T_975_1DF = 12.706204736  # scipy.stats.t.ppf(0.975, 1): the 95 % interval of a mean over two seeds
EXPERIMENTS = ("scale", "prompt_length", "hard_vs_soft", "domain_shift")


def _compose(*overrides: str, hydra: bool = False):
    """The real config tree as `bench -m experiment=...` composes it (no test defaults for model or trainer)."""
    from hydra import compose, initialize_config_dir

    from bench.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["logger=none", *overrides], return_hydra_config=hydra)


def _sweep_points(name: str) -> list[list[str]]:
    """Every point of the experiment's Hydra grid but the seeds (which change no setting checked)."""
    cfg = _compose(f"experiment={name}", hydra=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items() if k != "seed"}
    return [[f"{k}={v}" for k, v in zip(params, values)] for values in itertools.product(*params.values())]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_point_of_each_experiment_composes_and_validates(name):
    points = _sweep_points(name)
    assert points
    for point in points:
        typed = checks.validate(_compose(f"experiment={name}", *point))
        assert typed.experiment_name == name
        assert typed.trainer.max_steps is not None  # a CPU-sized budget (see the YAML's comment)


def test_the_experiment_grids_are_the_ones_documented():
    assert len(_sweep_points("prompt_length")) == 5 * 4
    assert len(_sweep_points("scale")) == 2 * 3
    hard_vs_soft = {p[0]: _compose("experiment=hard_vs_soft", p[0]).method for p in _sweep_points("hard_vs_soft")}
    assert sorted(m.shots for m in hard_vs_soft.values() if m.name == "hard_prompt") == [0, 1, 4, 8]
    assert sorted(m.peft.num_virtual_tokens for m in hard_vs_soft.values() if m.name == "prompt") == [5, 20, 100]


# ---------------------------------------------------------------------------- plot data from result files

def _write(root, name: str, *, experiment: str, model="minilm", kind="encoder", method="prompt", seed=0, value=0.8,
           status="finished", base=None, total=1000, trainable=10, method_cfg=None, throughput=None, extra=None):
    data = {"schema_version": 2, "status": status, "task": "sst2", "model": model, "method": method, "seed": seed,
            "primary_metric": "accuracy", "metrics": {"accuracy": value}, "overrides": [],
            "config": {"experiment_name": experiment, "model": {"name": model, "kind": kind},
                       "method": {"name": method, **(method_cfg or {})}},
            "params": {"total": total, "trainable": trainable, "trainable_percent": 1.0, "stored": trainable,
                       **({"base": base} if base is not None else {})}}
    if throughput is not None:
        data["throughput"] = throughput
    data.update(extra or {})
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(data))


def _interval(a: float, b: float) -> tuple[float, float]:
    mean, sem = (a + b) / 2, abs(a - b) / 2  # two values: sd = |a - b| / sqrt(2), sem = sd / sqrt(2)
    return mean - T_975_1DF * sem, mean + T_975_1DF * sem


def test_scale_plot_data_from_result_files(tmp_path):
    for seed, (a, b) in enumerate([(0.70, 0.80), (0.74, 0.90)]):
        _write(tmp_path, f"m-lora-{seed}", experiment="scale", method="lora", seed=seed, value=a, base=22_000_000,
               total=22_100_000)
        _write(tmp_path, f"s-lora-{seed}", experiment="scale", model="smollm2-135m", kind="decoder", method="lora",
               seed=seed, value=b, base=135_000_000, total=135_500_000)
    # older file without params.base: its total stands in; other experiments and failed runs are left out
    _write(tmp_path, "m-prompt-0", experiment="scale", method="prompt", value=0.6, total=22_000_500)
    _write(tmp_path, "other", experiment="prompt_length", method="lora", value=0.1, base=22_000_000)
    _write(tmp_path, "none", experiment="", method="lora", value=0.1, base=22_000_000)
    _write(tmp_path, "failed", experiment="scale", method="lora", seed=5, value=0.0, status="failed", base=1)
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.scale_plots(runs)
    assert plot.key == ("sst2", "accuracy") and plot.title == "sst2: accuracy vs base model parameters"
    assert plot.x_labels == {22_000_000: "minilm (encoder)", 22_000_500: "minilm (encoder)",
                             135_000_000: "smollm2-135m (decoder)"}
    series = {s.name: s for s in plot.series}
    assert sorted(series) == ["lora", "prompt"]
    small, large = series["lora"].points
    assert (small.x, small.label, small.n) == (22_000_000, "minilm (encoder)", 2)
    assert (large.x, large.label, large.n) == (135_000_000, "smollm2-135m (decoder)", 2)
    assert small.mean == pytest.approx(0.72) and large.mean == pytest.approx(0.85)
    assert small.interval == pytest.approx(_interval(0.70, 0.74))
    assert large.interval == pytest.approx(_interval(0.80, 0.90))
    (only,) = series["prompt"].points
    assert (only.x, only.mean, only.interval, only.n) == (22_000_500, 0.6, None, 1)


def test_prompt_length_plot_data_from_result_files(tmp_path):
    for mode, n, seed, value in [("vocab", 100, 0, 0.9), ("vocab", 5, 0, 0.7), ("vocab", 5, 1, 0.8),
                                 ("labels", 20, 0, 0.85), ("text", None, 0, 0.75)]:
        _write(tmp_path, f"{mode}-{n}-{seed}", experiment="prompt_length", seed=seed, value=value,
               method_cfg={"peft": {"num_virtual_tokens": n}, "init": {"mode": mode}},
               extra={"adaptation": {"num_virtual_tokens": 12}} if n is None else None)
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.prompt_length_plots(runs)
    got = {s.name: [(p.x, round(p.mean, 6), p.n) for p in s.points] for s in plot.series}
    # null length with init text: the length the run recorded (the text's tokens)
    assert got == {"labels": [(20, 0.85, 1)], "text": [(12, 0.75, 1)], "vocab": [(5, 0.75, 2), (100, 0.9, 1)]}
    vocab = next(s for s in plot.series if s.name == "vocab")
    assert vocab.points[0].interval == pytest.approx(_interval(0.7, 0.8))
    assert plot.log_x and plot.x_title == "virtual tokens"


def test_hard_vs_soft_plot_data_from_result_files(tmp_path):
    def tput(tokens, samples, virtual):
        return {"eval_tokens": tokens, "eval_samples": samples, "virtual_positions": virtual, "train_tokens": 0}

    _write(tmp_path, "h0", experiment="hard_vs_soft", method="hard_prompt", trainable=0, value=0.6,
           method_cfg={"shots": 0}, throughput=tput(9_000, 300, 0))
    for seed, value in ((0, 0.7), (1, 0.8)):  # 4-shot: 130.5 tokens per row (demonstrations included)
        _write(tmp_path, f"h4-{seed}", experiment="hard_vs_soft", method="hard_prompt", trainable=0, seed=seed,
               value=value, method_cfg={"shots": 4}, throughput=tput(39_150, 300, 0))
    _write(tmp_path, "s20", experiment="hard_vs_soft", method="prompt", trainable=11_520, value=0.75,
           method_cfg={"peft": {"num_virtual_tokens": 20}}, throughput=tput(6_000, 300, 20))
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.hard_vs_soft_plots(runs)
    assert plot.key == ("sst2", "minilm", "accuracy")
    got = {s.name: [(p.label, p.x, round(p.mean, 6), p.hollow) for p in s.points] for s in plot.series}
    assert got == {ex.HARD: [("0-shot", 30.0, 0.6, True), ("4-shot", 130.5, 0.75, True)],
                   "soft prompt (trained)": [("20 virtual", 40.0, 0.75, False)]}  # 6000 / 300 + 20 virtual
    hard = next(s for s in plot.series if s.name == ex.HARD)
    assert hard.points[1].interval == pytest.approx(_interval(0.7, 0.8))
    table = ex.hard_vs_soft_table(plot, runs)
    rows = {(r[0].text, r[1].text): [c.text for c in r] for r in table.rows}
    assert rows[("soft prompt (trained)", "20 virtual")][2:5] == ["40.0", "20", "yes"]
    assert rows[(ex.HARD, "4-shot")][4] == "no"


def test_a_multiple_choice_soft_prompt_pays_its_virtual_tokens_once_per_choice(tmp_path):
    """COPA scores each row as two (context, choice) sequences: 20 virtual tokens cost 40 positions per row."""
    _write(tmp_path, "s20", experiment="hard_vs_soft", method="prompt", trainable=11_520, value=0.6,
           method_cfg={"peft": {"num_virtual_tokens": 20}},
           throughput={"eval_tokens": 6_000, "eval_samples": 100, "virtual_positions": 20, "train_tokens": 0,
                       "eval_sequences_per_sample": 2.0})
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.hard_vs_soft_plots(runs)
    assert [p.x for p in plot.series[0].points] == [100.0]  # 6000 / 100 + 2 x 20
    (row,) = ex.hard_vs_soft_table(plot, runs).rows
    assert [c.text for c in row][2:4] == ["100.0", "40"]


def test_identical_seeds_and_the_fixed_rows_are_said_not_drawn_as_certainty(tmp_path):
    """A zero-shot prompt gives every seed the same value: its interval cell says so instead of [x, x]; the note
    under each plot gives the rows every seed was scored on and their example-level half-width (400 rows at 0.5:
    1.96 * sqrt(0.25 / 400) = 0.049) and the majority class's score there."""
    extra = {"eval_split": "validation", "data": {"splits": {"validation": 400}},
             "baselines": {"majority": {"metrics": {"accuracy": 0.51}, "prediction": 1}}}
    for seed in (0, 1, 2):
        _write(tmp_path, f"h0-{seed}", experiment="hard_vs_soft", method="hard_prompt", trainable=0, seed=seed,
               value=0.61, method_cfg={"shots": 0}, extra=extra,
               throughput={"eval_tokens": 8_000, "eval_samples": 400, "virtual_positions": 0, "train_tokens": 0})
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.hard_vs_soft_plots(runs)
    (point,) = plot.series[0].points
    assert point.interval == pytest.approx((0.61, 0.61)) and ex.ci_text(point) == "none: 3 seeds identical"
    assert "sst2 validation: 400 rows, majority class 0.5100, example-level 95 % half-width at 0.5: ±0.049" \
        in plot.note
    (section,) = ex.experiment_sections(runs)
    assert ("p", plot.note) in section.parts[0][1]
    from bench.report.experiment_svg import experiment_svg

    assert plot.baseline == pytest.approx(0.51) and "majority class 0.5100</text>" in experiment_svg(plot)


def test_experiment_sections_render_only_when_their_runs_exist(tmp_path):
    from bench.report.build import build_report

    empty = tmp_path / "plain"
    _write(empty, "r", experiment="", method="lora")
    built = build_report(empty, tmp_path / "out-plain")
    assert "Experiment:" not in built["markdown"].read_text() and "experiment-" not in built["html"].read_text()

    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate([(0.7, 0.8), (0.72, 0.86)]):
        _write(runs, f"a{seed}", experiment="scale", method="lora", seed=seed, value=a, base=22_000_000)
        _write(runs, f"b{seed}", experiment="scale", model="smollm2-135m", kind="decoder", method="lora", seed=seed,
               value=b, base=135_000_000)
    built = build_report(runs, tmp_path / "out")
    md, page = built["markdown"].read_text(), built["html"].read_text()
    assert "## Experiment: scale" in md and "(index.html#experiment-scale-0)" in md
    assert "| lora | smollm2-135m (decoder) | 135,000,000 | 0.8300 |" in md
    assert '<li><a href="#experiment-scale">Experiment: scale</a></li>' in page  # in the page's contents
    assert 'id="experiment-scale"' in page and 'data-plot="experiment-scale-0" data-expected="2"' in page
    assert page.count('data-point="line"') == 2 and "<polyline" in page


# ---------------------------------------------------------------------------- domain shift: the label map

def test_a_cb_row_reads_as_an_rte_row_through_the_declared_map(compose):
    from bench.shift import as_trained_rows

    cfg = checks.validate(compose("experiment=domain_shift"))
    label_map = dict(cfg.shift.label_map)
    batch = {"premise": ["It rained.", "Sun."], "hypothesis": ["It was wet.", "Dark."], "label": [2, 0],
             "idx": [3, 4], "_row_id": [3, 4]}  # CB: 0 entailment, 1 contradiction, 2 neutral
    rows = as_trained_rows(batch, cfg.task, cfg.shift.task, label_map)
    # RTE: 0 entailment, 1 not_entailment; neutral -> not_entailment, entailment -> entailment
    assert rows == {"sentence1": ["It rained.", "Sun."], "sentence2": ["It was wet.", "Dark."], "label": [1, 0],
                    "_row_id": [3, 4]}


@pytest.mark.parametrize("override,message", [
    ("~shift.label_map.neutral", "shift.label_map: cb's label 'neutral' is not mapped"),
    ("shift.label_map.neutral=maybe", "shift.label_map.neutral: 'maybe' is not a label of the trained task rte"),
    ("+shift.label_map.unsure=entailment", "shift.label_map: 'unsure' is not a label of cb"),
    ("task=sst2", "shift.task: cb has 2 text fields"),
])
def test_a_bad_label_map_is_a_config_error_before_loading(compose, monkeypatch, override, message):
    from bench import models, tasks

    def must_not_run(*args, **kwargs):
        raise AssertionError("loaded data or a model for a config that cannot run")

    monkeypatch.setattr(tasks, "load_task", must_not_run)
    monkeypatch.setattr(models, "load_model", must_not_run)
    with pytest.raises(ConfigError) as err:
        checks.validate(compose("experiment=domain_shift", override))
    assert message in str(err.value)


def test_a_domain_shift_run_records_shift_metrics_end_to_end(compose, tmp_path):
    from bench.run import execute

    cfg = compose("experiment=domain_shift", "method=lora", "trainer=smoke", "model=tiny-bert",
                  "trainer.train_samples=16", "trainer.max_steps=2", "trainer.eval_samples=24")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    assert "accuracy" in result["metrics"] and result["metrics"] != {}
    shift = result["shift"]
    assert shift["task"] == "cb" and shift["rows"] == 24
    assert shift["label_map"] == {"entailment": "entailment", "contradiction": "not_entailment",
                                  "neutral": "not_entailment"}
    assert sum(b["rows"] for b in shift["by_label"].values()) == 24
    run_dir = tmp_path / "results" / "domain-shift" / result["run"]
    saved = json.loads(gzip.decompress((run_dir / shift["predictions"]).read_bytes()))
    assert len(saved["references"]) == 24 and set(saved["references"]) <= {0, 1}  # RTE's labels, mapped
    # the references are CB's labels through the map: count them from the file
    cb = [json.loads(line) for line in open(cfg.paths.data_dir + "/cb/validation.jsonl")]
    by_idx = {row["idx"]: row["label"] for row in cb}
    assert [{0: 0, 1: 1, 2: 1}[by_idx[i]] for i in saved["ids"]] == saved["references"]
    accuracy = sum(p == r for p, r in zip(saved["predictions"], saved["references"])) / 24
    assert shift["metrics"]["accuracy"] == pytest.approx(accuracy)
    majority = {0: 0, 1: 1}[result["baselines"]["majority"]["prediction"]]
    assert shift["majority_metrics"]["accuracy"] == pytest.approx(saved["references"].count(majority) / 24)
    written = json.loads((run_dir / "result.json").read_text())
    assert written["shift"] == json.loads(json.dumps(shift)) and written["params"]["base"] > 0
    assert written["config"]["experiment_name"] == "domain_shift"


def test_an_accuracy_axis_stops_at_its_bounds_where_a_seed_interval_would_pass_them(tmp_path):
    """Two seeds at 0.6 and 0.98: the t-interval reaches far past 1, the bar is drawn clipped, and the axis ends
    at 1.0 rather than at an accuracy no run can have."""
    import re

    from bench.report.experiment_svg import experiment_svg
    from bench.report.svg import L

    for seed, value in ((0, 0.6), (1, 0.98)):
        _write(tmp_path, f"h1-{seed}", experiment="hard_vs_soft", method="hard_prompt", trainable=0, seed=seed,
               value=value, method_cfg={"shots": 1},
               throughput={"eval_tokens": 6_000, "eval_samples": 100, "virtual_positions": 0, "train_tokens": 0})
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.hard_vs_soft_plots(runs)
    assert plot.series[0].points[0].interval[1] > 1.5
    ticks = [float(v) for v in re.findall(rf'<text x="{L - 6}" y="[\d.]+" text-anchor="end">([\d.]+)</text>',
                                          experiment_svg(plot))]
    assert max(ticks) == 1.0 and min(ticks) >= 0.0


def test_the_domain_shift_plot_draws_each_side_s_majority_class_floor(tmp_path):
    """In-domain rows and shifted rows have their own floor: the trained task's majority class scored on each. The
    dumbbell draws both as vertical dashed lines at their value on the shared axis, labelled."""
    import re

    from bench.report.experiment_svg import experiment_svg

    for method, (inside, out) in {"full": (0.70, 0.50), "prompt": (0.60, 0.45)}.items():
        for seed in (0, 1):
            _write(tmp_path, f"{method}-{seed}", experiment="domain_shift", method=method, seed=seed, value=inside,
                   extra={"baselines": {"majority": {"prediction": 1, "metrics": {"accuracy": 0.53}}},
                          "shift": {"task": "cb", "rows": 56, "metrics": {"accuracy": out},
                                    "majority_metrics": {"accuracy": 0.41}}})
    runs, _ = load_runs(tmp_path)
    ((key, rows),) = ex.shift_rows(runs).items()
    plot = ex.shift_plot(0, key, rows)
    assert (plot.baseline, plot.shifted_baseline) == (pytest.approx(0.53), pytest.approx(0.41))
    svg = experiment_svg(plot)
    floors = re.findall(r'<line class="baseline" x1="([\d.]+)" y1="[\d.]+" x2="([\d.]+)"', svg)
    assert len(floors) == 2 and all(a == b for a, b in floors)  # vertical
    marks = {g: float(x) for g, x in re.findall(r'data-group="([^"]+)" data-method="[^"]+" cx="([\d.]+)"', svg)}
    in_floor, out_floor = (float(a) for a, _ in floors)
    # on the metric axis: 0.41 < 0.45 < 0.50 < 0.53 < 0.60 < 0.70
    assert out_floor < marks["prompt: out-of-domain"] < marks["full: out-of-domain"] < in_floor \
        < marks["prompt: in-domain"] < marks["full: in-domain"]
    assert "majority class, in-domain: 0.530" in svg and "majority class, out-of-domain: 0.410" in svg


def test_identity_ignores_the_experiment_name_and_covers_the_shift(compose):
    from omegaconf import OmegaConf

    from bench.config import identity

    base = compose("experiment=domain_shift")
    assert identity(compose("experiment=domain_shift", "experiment_name=other")) == identity(base)
    unshifted = OmegaConf.merge(base, {"shift": None})
    assert identity(unshifted) != identity(base)
    # a run without a shift hashes as before the key existed (no `shift: null` in what is hashed)
    assert identity(unshifted) == identity(OmegaConf.masked_copy(unshifted, [k for k in unshifted if k != "shift"]))


def test_plots_draw_intervals_inside_a_bounded_metrics_range_and_labels_drop_the_shared_experiment(tmp_path):
    wide = ex.Point(0.0, 0.49, (-0.53, 1.51), 2, "out-of-domain")
    bounded = ex.Plot("p", "t", "accuracy", "accuracy", [])
    assert ex.drawn_interval(bounded, wide) == (0.0, 1.0) and wide.interval == (-0.53, 1.51)  # table keeps it
    assert ex.drawn_interval(ex.Plot("q", "t", "mcc", "mcc", []), wide) == (-0.53, 1.51)
    _write(tmp_path, "r", experiment="domain_shift", method="full",
           extra={"overrides": ["experiment=domain_shift", "method.lr=0.1", "seed=0"]})
    runs, _ = load_runs(tmp_path)
    assert runs[0].variant == "experiment=domain_shift,method.lr=0.1" and ex.shown_variant(runs[0]) == "method.lr=0.1"


def test_line_plot_marks_sit_on_their_lines_inside_the_frame_at_their_tick(tmp_path):
    """Each circle is at its series' polyline vertex, inside the plot frame, and at the tick of its x; intervals
    (two seeds: wide) do not move the marks."""
    import re

    from bench.report.experiment_svg import experiment_svg
    from bench.report.svg import L, R, W

    for mode, n, seed, value in itertools.product(["random", "text"], [1, 5, 20, 50], [0, 1], [None]):
        value = 0.6 + 0.1 * seed * (n % 3) + (0.05 if mode == "text" else 0.0)
        _write(tmp_path, f"{mode}-{n}-{seed}", experiment="prompt_length", seed=seed, value=value,
               method_cfg={"peft": {"num_virtual_tokens": n}, "init": {"mode": mode}})
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.prompt_length_plots(runs)
    svg = experiment_svg(plot)
    ticks = {label: float(x) for x, label in re.findall(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle">(\d+)</text>',
                                                         svg)}
    assert set(ticks) == {"1", "5", "20", "50"}
    for name in ("random", "text"):
        line = re.search(rf'<polyline data-method="{name}"[^>]* points="([^"]+)"', svg).group(1)
        vertices = [float(pair.split(",")[0]) for pair in line.split()]
        marks = [float(x) for x in re.findall(rf'<circle data-point="line" data-group="{name}: [^"]*" '
                                              rf'data-method="{name}" cx="([\d.-]+)"', svg)]
        assert marks == vertices == [ticks[t] for t in ("1", "5", "20", "50")]
        assert all(L <= x <= W - R for x in marks)


def test_tick_labels_of_nearby_points_do_not_print_over_each_other(tmp_path):
    """Points at 132 and 133 tokens per prediction (the hard-vs-soft reference) sit 1 px apart on a log axis: both
    get a grid line, one gets the label; 1 and 1,000 are far apart and both get theirs."""
    import re

    from bench.report.experiment_svg import experiment_svg

    for name, tokens in (("a", 1_000), ("b", 132_000), ("c", 133_000), ("d", 1_000_000)):
        _write(tmp_path, name, experiment="hard_vs_soft", method="hard_prompt", trainable=0, value=0.6,
               method_cfg={"shots": {"a": 0, "b": 1, "c": 2, "d": 8}[name]},
               throughput={"eval_tokens": tokens, "eval_samples": 1_000, "virtual_positions": 0, "train_tokens": 0})
    runs, _ = load_runs(tmp_path)
    (plot,) = ex.hard_vs_soft_plots(runs)
    svg = experiment_svg(plot)
    labels = re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="middle">([\d,.kM]+)</text>', svg)
    assert labels == ["1", "132", "1k"]
    grid = re.findall(r'<line class="grid" x1="([\d.]+)" y1="30"', svg)
    assert len(grid) == 4
