"""bench-protocol: selection reads dev only, every method gets the same trials, re-runs redo nothing,
finals record how they were selected.

The end-to-end tests run the real protocol (tiny-bert, smoke budget, rte, lora + prompt, 2 learning
rates, 1 seed) through `bench` multiruns; the others plan or run it against a fake `bench` that writes
result files with hand-set dev and validation scores, so they take seconds.
"""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bench import config as bconfig
from bench import protocol, record
from bench.protocol import launch
from bench.errors import ConfigError

TINY = ["model=tiny-bert", "trainer=smoke", "trainer.dev_samples=32", "logger=none"]
E2E = ["task=rte", "method=lora,prompt", "lr_factors=[1,3]", "seeds=1", *TINY]


def _data_dir() -> Path:
    return Path(os.environ.get("BENCH_DATA_DIR") or bconfig.default_data_dir())


def _copy_task(dest: Path, task: str, flip_validation: bool) -> Path:
    """The task's files under dest/<task>/; flip_validation maps every validation label y -> 1 - y."""
    (dest / task).mkdir(parents=True)
    for split in ("train", "validation"):
        lines = (_data_dir() / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        if split == "validation" and flip_validation:
            rows = [json.loads(line) for line in lines if line.strip()]
            lines = [json.dumps({**row, "label": 1 - row["label"]}, ensure_ascii=False) for row in rows]
        (dest / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def _protocol(results: Path, data: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench.protocol", *E2E, f"paths.results_dir={results}", f"paths.data_dir={data}",
           "sweep=p", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _summary(results: Path) -> dict:
    return json.loads((results / "p" / "protocol.json").read_text())


def _cells(results: Path) -> dict:
    return {c["method"]: c for c in _summary(results)["cells"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same protocol on the same data, except that B's validation labels are flipped (y -> 1 - y)."""
    root = tmp_path_factory.mktemp("protocol")
    data_a = _copy_task(root / "data_a", "rte", flip_validation=False)
    data_b = _copy_task(root / "data_b", "rte", flip_validation=True)
    first = _protocol(root / "a", data_a)
    # B stops after selection: selection is all this comparison needs
    _protocol(root / "b", data_b, "finals=false")
    return {"a": root / "a", "b": root / "b", "data_a": data_a, "data_b": data_b, "first_stdout": first.stdout}


def test_selection_is_the_same_when_validation_labels_are_flipped(runs):
    a, b = _cells(runs["a"]), _cells(runs["b"])
    assert sorted(a) == sorted(b) == ["lora", "prompt"]
    val_a = (runs["data_a"] / "rte" / "validation.jsonl").read_text().splitlines()
    val_b = (runs["data_b"] / "rte" / "validation.jsonl").read_text().splitlines()
    assert [json.loads(x)["label"] for x in val_b] == [1 - json.loads(x)["label"] for x in val_a]
    for method in a:
        sa, sb = a[method]["selection"], b[method]["selection"]
        assert [t["values"] for t in sa["trials"]] == [t["values"] for t in sb["trials"]]
        assert [t["dev_score"] for t in sa["trials"]] == [t["dev_score"] for t in sb["trials"]]
        assert all(t["dev_score"] is not None for t in sa["trials"])
        assert sa["winner"]["values"] == sb["winner"]["values"]
        for folder, selection in ((runs["a"], sa), (runs["b"], sb)):  # the trials never evaluated validation
            for t in selection["trials"]:
                result = json.loads((folder / "p" / t["run"] / "result.json").read_text())
                assert result["eval_split"] == "dev" and "metrics" not in result and "dev_metrics" in result


def test_every_method_gets_the_same_trials(runs):
    cells = _cells(runs["a"])
    assert [len(cells[m]["selection"]["trials"]) for m in ("lora", "prompt")] == [2, 2]
    for method, cell in cells.items():
        lr = OmegaConf.load(bconfig.CONF_DIR / "method" / f"{method}.yaml").lr
        assert [t["values"] for t in cell["selection"]["trials"]] == [{"method.lr": lr}, {"method.lr": lr * 3}]
    assert _summary(runs["a"])["trials_per_cell"] == 2


def test_finals_record_the_selection_and_the_trials(runs):
    for method, cell in _cells(runs["a"]).items():
        assert cell["status"] == "finished" and len(cell["finals"]) == 1
        final = json.loads((runs["a"] / "p" / cell["finals"][0]["run"] / "result.json").read_text())
        assert final["status"] == "finished" and final["eval_split"] == "validation"
        assert "accuracy" in final["metrics"]
        selection = final["selection"]
        assert selection == cell["selection"]
        assert final["config"]["method"]["lr"] == selection["winner"]["values"]["method.lr"]
        assert selection["split"] == "dev" and selection["search"]["n_trials"] == 2
        assert selection["search"]["seed"] == 1000 and final["seed"] == 0  # the search seed is no final seed
        for trial in selection["trials"]:
            run = json.loads((runs["a"] / "p" / trial["run"] / "result.json").read_text())
            assert trial["identity"] == run["identity"] and run["seed"] == 1000
            assert trial["dev_score"] == run["dev_metrics"]["accuracy"]
            assert trial["dev_loss"] == run["dev_loss"] and 0 < run["dev_loss"] < 10  # cross-entropy on dev rows
        assert "dev_loss" not in final  # finals evaluate validation only
        best = max(t["dev_score"] for t in selection["trials"])
        assert selection["winner"]["dev_score"] == best


def test_rerunning_the_protocol_redoes_nothing(runs):
    a = runs["a"]
    files = sorted(a.glob("p/**/result.json")) + [a / "p" / "protocol.json", *sorted(a.glob("p/selection/*.json"))]
    assert len(files) == 2 * 2 + 2 + 1 + 2  # trials, finals, summary, selection files
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    out = _protocol(a, runs["data_a"])
    assert out.stdout.count("protocol: skip ") == 2 * 2 + 2
    assert "protocol: launch" not in out.stdout and "bench: skip" not in out.stdout
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before


# ------------------------------------------------------------------------------ fast: no training

def _plan(*argv: str, bench=None) -> protocol.Protocol:
    settings, passthrough, given = protocol.parse_args(list(argv))
    p = protocol.Protocol(settings, passthrough, list(argv), given, bench=bench)
    p.plan()
    return p


def test_command_line_splits_protocol_settings_from_bench_overrides():
    settings, passthrough, given = protocol.parse_args(
        ["task=rte,mrpc", "method=lora", "seed=0,1", "lr_factors=[0.5,2]", "trainer=smoke", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", "sweep=ref", "+trainer.foo=1"])
    assert list(settings.tasks) == ["rte", "mrpc"] and list(settings.methods) == ["lora"]
    assert list(settings.seeds) == [0, 1] and list(settings.lr_factors) == [0.5, 2] and settings.sweep == "ref"
    assert passthrough == ["trainer=smoke", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+trainer.foo=1"]
    assert given == {"tasks", "methods", "seeds", "lr_factors", "sweep"}
    assert protocol.seed_list(protocol.parse_args(["seeds=3"])[0]) == [0, 1, 2]
    for bad in (["trainer.eval_split=validation"], ["selection_file=x.json"], ["trainer.batch_size=8,16"],
                ["search=random"], ["seeds=0"]):
        with pytest.raises(ConfigError):
            protocol.parse_args(bad)


def test_default_grid_is_each_method_lr_times_the_factors():
    p = _plan(*TINY, "task=rte", "lr_factors=[0.5,1,2]", "dry_run=true")
    grids = {c.method: [t["method.lr"] for t in c.grid] for c in p.cells}
    assert grids == {"full": [2.5e-05, 5e-05, 1e-04], "lora": [5e-04, 1e-03, 2e-03],
                     "prefix": [5e-03, 1e-02, 2e-02], "prompt": [0.015, 0.03, 0.06]}
    assert {c.n_trials for c in p.cells} == {3}
    assert protocol.round_sig(5e-5 * 0.333) == 1.67e-05


def test_method_search_grid_and_unequal_budgets():
    space = protocol.flatten_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "peft": {"r": [4, 8]}})
    assert space == {"method.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "method.peft.r": [4, 8]}
    settings = protocol.parse_args(["lr_factors=[1,2,3]"])[0]
    trials = protocol.grid(space, settings)
    assert trials == [{"method.lr": 1e-4, "method.peft.r": 4}, {"method.lr": 1e-4, "method.peft.r": 8},
                      {"method.lr": 1e-3, "method.peft.r": 4}, {"method.lr": 1e-3, "method.peft.r": 8},
                      {"method.lr": 1e-2, "method.peft.r": 4}, {"method.lr": 1e-2, "method.peft.r": 8}]
    protocol.check_equal_budget({"rte-m-lora": 6, "rte-m-prompt": 6})
    with pytest.raises(ConfigError, match="unequal search budgets"):
        protocol.check_equal_budget({"rte-m-lora": 6, "rte-m-prompt": 3})


def test_ties_go_to_the_smaller_learning_rate_then_the_earlier_trial():
    trials = [{"index": 0, "values": {"method.lr": 3e-3}, "dev_score": 0.75},
              {"index": 1, "values": {"method.lr": 1e-3}, "dev_score": 0.75},
              {"index": 2, "values": {"method.lr": 1e-2}, "dev_score": 0.5},
              {"index": 3, "values": {"method.lr": 1e-4}, "dev_score": None}]
    assert protocol.select(trials)["index"] == 1
    trials[2]["dev_score"] = 0.8
    assert protocol.select(trials)["index"] == 2
    same_lr = [{"index": 0, "values": {"method.lr": 1e-3, "method.peft.r": 8}, "dev_score": 0.6},
               {"index": 1, "values": {"method.lr": 1e-3, "method.peft.r": 4}, "dev_score": 0.6}]
    assert protocol.select(same_lr)["index"] == 0
    assert protocol.select([{"index": 0, "values": {}, "dev_score": None}]) is None


def test_ties_go_to_the_lower_dev_loss_before_the_learning_rate():
    def trial(index, lr, score, loss):
        return {"index": index, "values": {"method.lr": lr}, "dev_score": score, "dev_loss": loss}

    trials = [trial(0, 1e-3, 0.75, 0.60), trial(1, 3e-3, 0.75, 0.40), trial(2, 1e-2, 0.70, 0.10)]
    assert protocol.select(trials)["index"] == 1  # equal scores: the lower loss wins over the smaller lr
    trials[2]["dev_score"] = 0.75 + 1e-14  # equal to 12 decimals: still a tie, and its loss is the lowest
    assert protocol.select(trials)["index"] == 2
    equal_loss = [trial(0, 3e-3, 0.75, 0.5), trial(1, 1e-3, 0.75, 0.5), trial(2, 1e-4, 0.5, 0.1)]
    assert protocol.select(equal_loss)["index"] == 1  # equal losses: the smaller lr
    same = [trial(0, 1e-3, 0.75, 0.5), trial(1, 1e-3, 0.75, 0.5)]
    assert protocol.select(same)["index"] == 0  # then the earlier trial
    no_loss = [trial(0, 1e-4, 0.75, None), trial(1, 1e-3, 0.75, 0.9)]
    assert protocol.select(no_loss)["index"] == 1  # a trial without a loss comes after one with a loss
    assert "lower dev loss" in protocol.TIE_BREAK


def test_an_experiment_names_the_lists_and_an_optuna_sweeper_is_refused():
    p = _plan(*TINY, "experiment=compare", "dry_run=true")
    assert sorted(c.method for c in p.cells) == ["full", "lora", "prefix", "prompt"]
    assert {c.task for c in p.cells} == {"sst2"} and p.seeds == [0, 1, 2]
    p = _plan(*TINY, "experiment=compare", "method=lora", "seeds=2", "dry_run=true")
    assert [c.method for c in p.cells] == ["lora"] and p.seeds == [0, 1]
    with pytest.raises(ConfigError, match="runs its own search"):
        _plan(*TINY, "experiment=prompt_search", "dry_run=true")


def test_a_quantised_plan_for_slurm_is_not_refused_for_the_login_node_s_missing_gpu():
    """On this GPU-less machine QLoRA is refused when the runs would execute here, with what to do, and planned when
    Slurm runs them elsewhere (each run checks its own node again before loading anything); a refusal that does not
    depend on the machine (a quantised base fully fine-tuned) stays one for Slurm too."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: nothing to refuse here")
    qlora = [*TINY, "model=tiny-llama", "task=rte", "method=lora", "model.quantization=nf4", "seeds=1", "dry_run=true"]
    with pytest.raises(ConfigError, match="runs on a CUDA device and none is visible"):
        _plan(*qlora)
    with pytest.raises(ConfigError, match="runs on a CUDA device and none is visible"):
        _plan(*qlora, "hydra/launcher=parallel")
    p = _plan(*qlora, "hydra/launcher=slurm")
    assert [c.method for c in p.cells] == ["lora"]
    with pytest.raises(ConfigError, match="cannot be fully fine-tuned"):
        _plan(*qlora, "method=full", "hydra/launcher=slurm")


def test_a_trainer_without_a_dev_split_is_refused():
    with pytest.raises(ConfigError, match="dev_samples"):
        _plan("model=tiny-bert", "trainer=smoke", "logger=none", "task=rte", "method=lora", "dry_run=true")


@pytest.fixture
def own_conf(tmp_path):
    """A user's own config folder holding task/mytask.yaml (SST-2 under another name), as hydra.searchpath reads it."""
    folder = tmp_path / "my-conf"
    (folder / "task").mkdir(parents=True)
    text = (bconfig.CONF_DIR / "task" / "sst2.yaml").read_text(encoding="utf-8")
    assert "\nname: sst2\n" in f"\n{text}"
    (folder / "task" / "mytask.yaml").write_text(text.replace("name: sst2", "name: mytask", 1), encoding="utf-8")
    return folder


def test_a_task_in_the_users_own_config_folder_is_planned_via_hydra_searchpath(own_conf, tmp_path):
    searchpath = f"hydra.searchpath=[file://{own_conf}]"
    p = _plan(*TINY, searchpath, "task=mytask", "method=lora", "lr_factors=[1,3]", "seeds=1", "dry_run=true")
    assert [(c.task, c.method, c.n_trials) for c in p.cells] == [("mytask", "lora", 2)]
    assert searchpath in p.cells[0].base  # and so in every multirun the cell launches
    # the launched runs compose it too: the fake bench composes every job from the launched overrides
    fake = FakeBench(dev=lambda lr: lr, validation=lambda lr: 0.5)
    p = _plan(*TINY, searchpath, "task=mytask", "method=lora", "lr_factors=[1,3]", "seeds=1",
              f"paths.results_dir={tmp_path / 'results'}", bench=fake)
    assert p.run() == 0 and len(fake.launched) == 2 and all(searchpath in o for o in fake.launched)
    assert {record.read_result(tmp_path / "results" / "protocol" / t["run"])["config"]["task"]["name"]
            for t in p.cells[0].summary["selection"]["trials"]} == {"mytask"}
    # and `bench` itself reads the same overrides (one job of the launched search, config printed only)
    job = [o.split(",")[0] if o.startswith("method.lr=") else o for o in fake.launched[0]]
    out = subprocess.run([sys.executable, "-m", "bench.cli", *job, "--cfg", "job"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "name: mytask" in out.stdout, out.stderr[-2000:]


def test_an_unknown_task_is_a_config_error_naming_the_options(own_conf):
    with pytest.raises(ConfigError) as err:
        _plan(*TINY, f"hydra.searchpath=[file://{own_conf}]", "task=nosuchtask", "method=lora", "dry_run=true")
    message = str(err.value)
    assert "Could not find 'task/nosuchtask'" in message and "mytask" in message and "sst2" in message
    with pytest.raises(ConfigError, match="Could not find 'task/mytask'"):  # without the search path: unknown
        _plan(*TINY, "task=mytask", "method=lora", "dry_run=true")


class FakeBench(protocol.Bench):
    """Writes finished result files instead of training: dev and validation scores set by the test."""

    def __init__(self, dev, validation, dev_loss=None):
        super().__init__(dry_run=False)
        self.dev, self.validation, self.dev_loss, self.launched = dev, validation, dev_loss, []

    def multirun(self, overrides):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.launched.append(list(overrides))
        axes = []
        for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [text])
        for job in itertools.product(*axes):
            cfg = self.compose(list(job))
            lr, split = float(cfg.method.lr), cfg.trainer.eval_split
            result = {"status": "finished", "identity": bconfig.identity(cfg), "eval_split": split,
                      "config": bconfig.to_container(cfg), "primary_metric": "accuracy"}
            if split in ("dev", "both"):
                result["dev_metrics"] = {"accuracy": self.dev(lr)}
                if self.dev_loss is not None:
                    result["dev_loss"] = self.dev_loss(lr)
            if split in ("validation", "both"):
                result["metrics"] = {"accuracy": self.validation(lr)}
                if cfg.get("selection_file"):
                    result["selection"] = json.loads(Path(cfg.selection_file).read_text())
            folder = bconfig.run_dir(cfg)
            folder.mkdir(parents=True, exist_ok=True)
            record.write_json_atomic(folder / record.RESULT_FILE, result)


def test_the_winner_follows_dev_even_when_validation_disagrees(tmp_path):
    # dev prefers the largest lr, validation the smallest: the protocol must pick the largest
    fake = FakeBench(dev=lambda lr: lr, validation=lambda lr: -lr)
    p = _plan(*TINY, "task=rte", "method=lora,prompt", "lr_factors=[0.5,1,2]", "seeds=2",
              f"paths.results_dir={tmp_path}", bench=fake)
    assert p.run() == 0
    summary = json.loads((tmp_path / "protocol" / "protocol.json").read_text())
    winners = {c["method"]: c["selection"]["winner"]["values"]["method.lr"] for c in summary["cells"]}
    assert winners == {"lora": 2e-3, "prompt": 0.06}
    assert len(fake.launched) == 4  # per cell: one search multirun, one finals multirun
    assert all("trainer.eval_split=dev" in o for o in fake.launched[0::2])
    assert all("trainer.eval_split=validation" in o and "seed=0,1" in o for o in fake.launched[1::2])
    for cell in summary["cells"]:
        for final in cell["finals"]:
            result = record.read_result(tmp_path / "protocol" / final["run"])
            assert result["selection"]["winner"]["values"] == {"method.lr": winners[cell["method"]]}
    again = FakeBench(dev=lambda lr: lr, validation=lambda lr: -lr)
    assert _plan(*TINY, "task=rte", "method=lora,prompt", "lr_factors=[0.5,1,2]", "seeds=2",
                 f"paths.results_dir={tmp_path}", bench=again).run() == 0
    assert again.launched == []


def test_trials_run_with_the_search_seed_and_finals_with_the_final_seeds(tmp_path):
    fake = FakeBench(dev=lambda lr: lr, validation=lambda lr: 0.5)
    p = _plan(*TINY, "task=rte", "method=lora", "lr_factors=[1,3]", f"paths.results_dir={tmp_path}", bench=fake)
    assert p.settings.search_seed == 1000 and p.seeds == [0, 1, 2]  # the defaults
    assert p.run() == 0
    search, finals = fake.launched
    assert "seed=1000" in search and "trainer.eval_split=dev" in search
    assert "seed=0,1,2" in finals and not any(o.startswith("seed=") and "1000" in o for o in finals)
    cell = p.cells[0].summary
    for trial in cell["selection"]["trials"]:
        assert record.read_result(tmp_path / "protocol" / trial["run"])["config"]["seed"] == 1000
    assert [f["seed"] for f in cell["finals"]] == [0, 1, 2]
    assert [record.read_result(tmp_path / "protocol" / f["run"])["config"]["seed"] for f in cell["finals"]] == [0, 1, 2]


def test_a_search_seed_among_the_final_seeds_is_a_settings_error():
    for argv in (["search_seed=0"], ["seed=0,1,1000"], ["seeds=3", "search_seed=2"]):
        with pytest.raises(ConfigError, match="search_seed") as err:
            protocol.parse_args(argv)
        assert "final seed" in str(err.value)
    # an experiment's seed list replaces the default one: it is checked as well, before any launch
    p = _plan(*TINY, "experiment=compare", "method=lora", "hydra.sweeper.params.seed='3,4'", "dry_run=true")
    assert p.seeds == [3, 4]
    with pytest.raises(ConfigError, match="search_seed"):
        _plan(*TINY, "experiment=compare", "method=lora", "hydra.sweeper.params.seed='0,1,1000'", "dry_run=true")


def test_equal_dev_scores_go_to_the_lower_dev_loss(tmp_path):
    # every trial scores the same on dev; the loss is lowest at the middle lr, so the smaller lr must not win
    fake = FakeBench(dev=lambda lr: 0.5, validation=lambda lr: 0.5, dev_loss=lambda lr: abs(lr - 1e-3))
    p = _plan(*TINY, "task=rte", "method=lora", "lr_factors=[0.5,1,2]", "seeds=1", "finals=false",
              f"paths.results_dir={tmp_path}", bench=fake)
    assert p.run() == 0
    selection = p.cells[0].summary["selection"]
    assert [t["dev_loss"] for t in selection["trials"]] == [abs(lr - 1e-3) for lr in (5e-4, 1e-3, 2e-3)]
    assert selection["winner"]["values"] == {"method.lr": 1e-3} and selection["winner"]["dev_loss"] == 0.0


def test_optuna_search_has_a_fixed_trial_count_and_is_repeatable(tmp_path):
    argv = [*TINY, "task=rte", "method=lora,prompt", "search=optuna", "n_trials=4", "seeds=1", "finals=false",
            f"paths.results_dir={tmp_path}"]
    fake = FakeBench(dev=lambda lr: -abs(lr - 1e-3), validation=lambda lr: 0.0)
    p = _plan(*argv, bench=fake)
    assert p.run() == 0
    trials = {c.method: c.summary["selection"]["trials"] for c in p.cells}
    assert {m: len(t) for m, t in trials.items()} == {"lora": 4, "prompt": 4}
    lora_lr = OmegaConf.load(bconfig.CONF_DIR / "method" / "lora.yaml").lr
    assert all(0.333 * lora_lr * 0.999 <= t["values"]["method.lr"] <= 3 * lora_lr * 1.001 for t in trials["lora"])
    again = FakeBench(dev=lambda lr: -abs(lr - 1e-3), validation=lambda lr: 0.0)
    q = _plan(*argv, bench=again)
    assert q.run() == 0
    assert again.launched == []  # the same sampler seed and scores suggest the same trials: all finished
    assert {c.method: c.summary["selection"]["trials"] for c in q.cells} == trials


def test_the_optuna_presets_score_trials_on_dev(tmp_path):
    cmd = [sys.executable, "-m", "bench.cli", "-m", "experiment=lora_search", "task=rte", *TINY,
           "hydra.sweeper.n_trials=2", f"paths.results_dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = [record.read_result(p) for p in sorted((tmp_path / "lora-search").iterdir())]
    assert len(runs) == 2
    for run in runs:
        assert run["status"] == "finished" and run["eval_split"] == "dev"
        assert "metrics" not in run and run["config"]["trainer"]["dev_samples"] == 32  # the command line wins
    # the objective Optuna maximised is the dev metric
    best = OmegaConf.load(next(tmp_path.glob("_hydra/**/optimization_results.yaml")))
    assert best.best_value == max(run["dev_metrics"]["accuracy"] for run in runs)


def test_after_a_forwarded_signal_no_new_stage_is_launched(monkeypatch):
    """Side-by-side cells (max_parallel > 1): once SIGTERM was passed on, the next stage is not started."""
    launched = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda cmd: launched.append(cmd))
    bench = protocol.Bench()
    bench.forward(15)
    with pytest.raises(protocol.Preempted):
        bench.multirun(["task=rte"])
    assert launched == []
