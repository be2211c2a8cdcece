"""Serve many trained adapters of one method from one base model, and measure what that costs.

`bench-serve-eval results/<sweep> --method lora` reads the finished runs of a sweep, loads the base
model once per group of compatible heads, loads every run's adapter into it with PEFT and, switching
between them:

- re-evaluates each task through `bench.evaluation.evaluate` (the run's own code path) and checks
  the metrics and predictions equal those recorded at training time (exit 1 otherwise);
- times adapter loading and switching (medians over repeats);
- compares bytes on disk and memory of one base + N adapters with N fine-tuned copies;
- (prompt tuning, classification and regression tasks) runs mixed-task batches, each row with its own
  soft prompt and, for encoders, its own classifier head, in one forward pass, and checks they predict
  what the per-task passes predict.

Any PEFT method whose runs kept an `adapter/` folder can be served, for every task shape.
Figures go to ``<results_dir>/serve-<method>.json`` and a short table is printed.

Modules: runs (which runs, how they group) <- group (one base + adapters: evaluate, time, weigh)
<- mixed (mixed-task batches) <- cli (serve_eval, the table, main).
"""
from bench.serve.cli import format_table, main, serve_eval

__all__ = ["format_table", "main", "serve_eval"]
