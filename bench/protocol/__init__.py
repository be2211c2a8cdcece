"""`bench-protocol`: an equal-budget comparison that selects on `dev` and reports on `validation`.

    bench-protocol task=rte,mrpc,sst2 trainer=protocol-cpu                # the CPU reference protocol
    bench-protocol task=rte method=lora trainer=protocol-cpu seeds=5      # one task, one method
    bench-protocol task=sst2 trainer=protocol-gpu hydra/launcher=slurm max_parallel=8
    bench-protocol task=rte search=optuna n_trials=6 trainer=protocol-cpu dry_run=true

The command line is `key=value` items, parsed with Hydra's override grammar:

- protocol settings, the keys of conf/protocol.yaml (`sweep`, `seeds`, `lr_factors`, `search`, ...);
- `task=`, `model=`, `method=` and `seed=` with one value or a comma list, read like a bench sweep:
  the tasks, models, methods and final seeds of the protocol (also `tasks=[..]`, `methods=[..]`);
- everything else is a `bench` override handed unchanged to every run: trainer presets, experiments,
  `hydra/launcher=joblib|submitit_local|slurm` and its settings, `logger=none`, `paths.*`, `force=true`,
  `hydra.searchpath=[file:///my/conf]` (tasks, methods... kept in your own config folder; the plan composes
  with it too). An experiment's `hydra.sweeper.params` for task/model/method/seed become the protocol's lists.

For each (task, model, method) "cell":

1. Search. Every cell gets the same number of trials. Grid (default): the method's learning rate
   times each of `lr_factors` (rounded to 3 significant digits), or the product of the lists in the
   method file's `search` dict (`{lr: [..], peft: {r: [..]}}`; a `{low, high, log}` interval gives
   `grid_points` points). `search=optuna`: `n_trials` trials of a seeded TPE sampler over the same
   space (intervals sampled, lists as choices; the default space is lr in [min, max] of the grid).
   Trials run with `seed=search_seed` (default 1000; one of the final seeds is a settings error: that
   final would re-run the winning trial, its lucky draw included), `trainer.eval_split=dev` and
   `sweep=<sweep>/search`: they are scored on the dev split carved from train (`trainer.dev_samples`)
   and never evaluate validation.
2. Selection: the highest dev score of the task's primary metric. Ties (scores equal to 12 decimals)
   go to the lower dev loss (result.json `dev_loss`: the training loss on the dev rows), then to the
   smaller learning rate, then to the earlier trial in grid/trial order. Failed or diverged
   trials cannot win; a cell without a finished trial runs no finals and makes the exit code 1.
3. Finals: the winning values with every seed, `trainer.eval_split=<final_eval_split>`,
   `sweep=<sweep>/final` and `selection_file=results/<sweep>/selection/<task>-<model>-<method>.json`,
   which each final copies into result.json `selection` (search space, trials with their overrides,
   run folders, identities and dev scores, the winning values).

Every stage is a Hydra multirun of the `bench` app (`python -m bench.cli -m ...`), so the launcher,
experiments and presets given here apply to every run. Run folders are computed beforehand with
Hydra's compose API and `bench.config.run_dir` (what `bench` itself uses to skip): a stage whose
runs all finished launches nothing (one `protocol: skip` line per run), so re-running the protocol
redoes nothing; a stage with missing runs is launched whole and `bench` skips its finished runs.
`results/<sweep>/protocol.json` summarises the settings, every cell's trials, winner and finals; the
report of the finals is `bench-report results/<sweep>/final`.

Exit codes: 0 all cells selected and all finals finished; 1 otherwise; 2 a configuration error
(found before anything is launched); 75 a run was preempted (the same command resumes; a SIGTERM
to bench-protocol is passed on to the running multirun, whose run checkpoints and exits 75).
`finals=false` stops after selection; `dry_run=true` prints the plan and launches nothing.
"""
from __future__ import annotations

# One job per module; imports point down only:
#   overrides (Hydra value text) <- settings (command line, checks) <- launch (compose, multirun)
#   <- results (run result files, the protocol's JSON files) <- plan (cells, spaces, grids, budget)
#   <- search (trials, selection) <- finals <- summary <- runner (Protocol) <- cli (main)
from bench.errors import ConfigError
from bench.protocol.cli import main
from bench.protocol.launch import EXIT_PREEMPTED, Bench, Preempted, ProtocolError
from bench.protocol.overrides import fmt, override_key, round_sig, value_overrides
from bench.protocol.plan import (LR_KEY, TRIAL_SPLIT, Cell, check_equal_budget, flatten_space, grid,
                                 interval_points, is_interval, search_space)
from bench.protocol.results import PROTOCOL_VERSION
from bench.protocol.runner import Protocol
from bench.protocol.search import TIE_BREAK, select
from bench.protocol.settings import PROTOCOL_FILE, check_settings, parse_args, seed_list

__all__ = ["ConfigError", "EXIT_PREEMPTED", "Bench", "Preempted", "ProtocolError", "fmt", "override_key",
           "round_sig", "value_overrides", "LR_KEY", "TRIAL_SPLIT", "Cell", "check_equal_budget", "flatten_space",
           "grid", "interval_points", "is_interval", "search_space", "PROTOCOL_VERSION", "Protocol", "TIE_BREAK",
           "select", "PROTOCOL_FILE", "check_settings", "parse_args", "seed_list", "main"]
