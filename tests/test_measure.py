"""The meters: memory per phase, bytes a loader needs, throughput windows, the training loop's figures,
FLOPs against torch's FLOP counter, preemption handling. Tiny models, seconds each."""
import functools
import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.measure import flops, memory, storage
from bench import train as train_mod
from bench.checkpoint import Checkpointer, Preempted, PreemptionGuard
from bench.measure.memory import PeakMemory
from bench.measure.throughput import Throughput

CPU = torch.device("cpu")
MB = 1024 * 1024
linux_proc = pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc")


# ---------------------------------------------------------------------------- memory

def _job(nbytes: int, keep: list | None = None) -> dict:
    """One phase that touches an nbytes buffer; `keep` holds on to it (a job that leaves memory behind)."""
    memory = PeakMemory(CPU)
    memory.reset()
    buffer = np.ones(nbytes, dtype=np.uint8)  # np.ones writes every page: resident
    if keep is not None:
        keep.append(buffer)
    del buffer
    return memory.read()


@linux_proc
def test_added_memory_leaves_out_an_earlier_jobs_buffer():
    big = _job(400 * MB)
    small = _job(4 * MB)
    assert big["added_bytes"] >= 390 * MB
    assert 3 * MB <= small["added_bytes"] < 40 * MB  # the freed 400 MB is not the small job's
    assert "added = VmHWM - VmRSS" in small["method"]


@linux_proc
def test_absolute_peak_includes_what_an_earlier_job_left_resident_added_does_not():
    left_behind: list = []
    big = _job(400 * MB, keep=left_behind)
    small = _job(4 * MB)
    assert big["added_bytes"] >= 390 * MB
    assert small["peak_bytes"] >= 400 * MB       # the process holds the earlier job's buffer
    assert small["added_bytes"] < 40 * MB        # the small job's own figure does not
    left_behind.clear()


@linux_proc
def test_release_earlier_jobs_frees_a_model_left_in_a_reference_cycle():
    """A PEFT-wrapped model sits in reference cycles: it outlives its job until the collector runs."""
    import gc

    from bench.measure.memory import release_earlier_jobs

    class Job:  # a cycle holding 400 MB, as an earlier job's model would
        def __init__(self):
            self.buffer = np.ones(400 * MB, dtype=np.uint8)
            self.me = self

    gc.disable()  # the collector must not run on its own between the two readings
    try:
        Job()
        held = _job(4 * MB)
        release_earlier_jobs()
        freed = _job(4 * MB)
    finally:
        gc.enable()
    assert held["peak_bytes"] - freed["peak_bytes"] >= 350 * MB


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_added_memory_is_peak_minus_allocated_at_reset():
    device = torch.device("cuda")
    resident = torch.ones(64 * MB, dtype=torch.uint8, device=device)
    memory = PeakMemory(device)
    memory.reset()
    tmp = torch.ones(32 * MB, dtype=torch.uint8, device=device)
    del tmp
    reading = memory.read()
    assert reading["added_bytes"] == 32 * MB
    assert reading["peak_bytes"] >= 96 * MB
    del resident


def test_memory_section_takes_the_largest_figure_over_phases():
    train = {"peak_bytes": 1000, "added_bytes": 300, "method": "m"}
    evaluation = {"peak_bytes": 900, "added_bytes": 400, "method": "m"}
    section = memory.memory_section(train, evaluation)
    assert section == {"peak_bytes": 1000, "added_bytes": 400, "train_peak_bytes": 1000, "train_added_bytes": 300,
                       "eval_peak_bytes": 900, "eval_added_bytes": 400, "method": "m", "figure": "added"}
    only_eval = memory.memory_section(None, evaluation)
    assert only_eval["peak_bytes"] == 900 and only_eval["train_peak_bytes"] is None
    cuda = memory.memory_section(
        {"peak_bytes": 10, "added_bytes": 4, "peak_reserved_bytes": 20, "added_reserved_bytes": 8, "method": "c",
         "per_process_peak_bytes": [10, 11], "per_process_added_bytes": [4, 5]},
        {"peak_bytes": 12, "added_bytes": 2, "peak_reserved_bytes": 16, "added_reserved_bytes": 6, "method": "c"})
    assert cuda["figure"] == "allocated"
    assert (cuda["peak_bytes"], cuda["added_bytes"], cuda["peak_reserved_bytes"], cuda["added_reserved_bytes"]) \
        == (12, 4, 20, 8)
    assert cuda["per_process_train_added_bytes"] == [4, 5]
    unknown = memory.memory_section({"peak_bytes": 5, "added_bytes": None, "method": "x"}, evaluation)
    assert unknown["added_bytes"] is None  # never a max over a figure that could not be read


def _cfg(**over):
    base = dict(max_steps=None, weight_decay=0.0, warmup_ratio=0.0, grad_clip=1.0, throughput_warmup_steps=1,
                log_every=1, device="cpu", mixed_precision="no")
    base.update(over)
    return SimpleNamespace(**base)


def _token_rows(n: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, vocab, (length,), generator=g), "attention_mask": torch.ones(length, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def _stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


@linux_proc
def test_full_fine_tuning_adds_more_training_memory_than_lora():
    """Same task, same tiny BERT: full fine-tuning's training phase adds gradients and two AdamW states for
    every weight; LoRA only for its adapters. Both runs in this one process, LoRA first."""
    import peft
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024)
    rows = _token_rows(8, 16, config.vocab_size)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]  # two steps: the AdamW states exist from the first
    lengths = [16] * 8
    added = {}
    for method in ("lora", "full"):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
        n_params = sum(p.numel() for p in model.parameters())
        if method == "lora":
            model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=8,
                                                                target_modules=["query", "value"]))
        cfg = _cfg()
        stats = train_mod.train(model, rows, batches, lengths, _stack, lr=1e-4, trainer_cfg=cfg,
                                accelerator=train_mod.make_accelerator(cfg))
        added[method] = stats.peak_memory["added_bytes"]
        del model, stats
    grads_and_adam = 3 * 4 * n_params  # fp32 gradient + exp_avg + exp_avg_sq per weight
    print(f"train added: full {added['full'] / MB:.0f} MiB, lora {added['lora'] / MB:.0f} MiB, "
          f"grads + AdamW states {grads_and_adam / MB:.0f} MiB ({n_params} weights)")
    assert added["full"] >= 0.9 * grads_and_adam  # all of them are held at the phase's peak
    # LoRA's figure is its activations and small states (plus, as the first job in this process, one-off
    # lazy initialisation of about 16 MiB)
    assert added["full"] - added["lora"] > 0.5 * grads_and_adam


# ---------------------------------------------------------------------------- storage

def _write(folder: Path, name: str, size: int) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_storage_counts_weights_and_loader_config_only(tmp_path):
    save_file({"w": torch.zeros(10, 10)}, str(tmp_path / "adapter_model.safetensors"))
    weights = (tmp_path / "adapter_model.safetensors").stat().st_size
    _write(tmp_path, "adapter_config.json", 123)
    _write(tmp_path, "README.md", 5000)
    _write(tmp_path, "tokenizer.json", 777)
    _write(tmp_path, "tokenizer_config.json", 55)
    info = storage.storage(tmp_path)
    assert info["bytes"] == weights + 123
    assert sorted(info["counted"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert info["files"] == {"README.md": 5000, "adapter_config.json": 123, "adapter_model.safetensors": weights,
                             "tokenizer.json": 777, "tokenizer_config.json": 55}
    assert info["stored_params"] == 100


def test_storage_of_a_full_model_sharded_weights_and_a_hard_prompt(tmp_path):
    full = tmp_path / "model"
    full.mkdir()
    save_file({"a": torch.zeros(30)}, str(full / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(2, 5)}, str(full / "model-00002-of-00002.safetensors"))
    for name, size in [("config.json", 700), ("generation_config.json", 120), ("model.safetensors.index.json", 250),
                       ("special_tokens_map.json", 80), ("tokenizer.json", 5000), ("README.md", 900)]:
        _write(full, name, size)
    shards = sum((full / f"model-0000{i}-of-00002.safetensors").stat().st_size for i in (1, 2))
    info = storage.storage(full)
    assert info["bytes"] == shards + 700 + 120 + 250
    assert sorted(info["counted"]) == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                                       "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert len(info["files"]) == 8 and info["stored_params"] == 40
    assert storage.counted_file("pytorch_model.bin") and storage.counted_file("sub/adapter_config.json")
    prompt = tmp_path / "prompt"
    _write(prompt, "prompt.txt", 321)
    assert storage.storage(prompt) == {"bytes": 321, "files": {"prompt.txt": 321}, "counted": ["prompt.txt"],
                                       "dtypes": {}, "stored_params": 0}


def test_storage_of_a_real_peft_adapter_is_weights_plus_adapter_config(tmp_path):
    import peft
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    model.save_pretrained(tmp_path, safe_serialization=True)
    info = storage.storage(tmp_path)
    weights = (tmp_path / "adapter_model.safetensors").stat().st_size
    config = (tmp_path / "adapter_config.json").stat().st_size
    assert info["bytes"] == weights + config
    assert "README.md" in info["files"] and "README.md" not in info["counted"]  # PEFT's model card: listed only
    # LoRA A (4 x 32) and B (32 x 4) on query and value of 2 layers, plus the classifier head (32 x 2 + 2)
    assert info["stored_params"] == 2 * 2 * (4 * 32 + 32 * 4) + 32 * 2 + 2


# ---------------------------------------------------------------------------- throughput

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_meter_leaves_out_warm_up_steps_and_pauses():
    clock = FakeClock()
    meter = Throughput(CPU, warmup=2, clock=clock)
    for seconds, samples, tokens in [(10, 4, 40), (10, 4, 40), (1, 4, 30), (1, 4, 20), (2, 8, 50)]:
        meter.before_step()
        clock.advance(seconds)
        meter.after_step(samples, tokens)
        if tokens == 30:
            with meter.paused():  # a checkpoint write
                clock.advance(100)
    meter.stop()
    assert meter.elapsed == 4.0
    assert (meter.steps, meter.samples, meter.tokens) == (5, 24, 180)
    assert meter.rates() == (100 / 4, 16 / 4)


def test_eval_warm_up_runs_outside_the_window_and_every_batch_is_timed():
    clock = FakeClock()
    meter = Throughput(CPU, warmup=0, clock=clock)
    out = meter.warm_up(lambda: clock.advance(50) or "warm")
    assert out == "warm"
    for seconds in (3, 2, 1):  # longest batch first, as eval batches are sorted
        meter.before_step()
        clock.advance(seconds)
        meter.after_step(10, seconds * 100)
    meter.stop()
    assert meter.elapsed == 6 and meter.timed_samples == meter.samples == 30
    assert meter.rates() == (600 / 6, 30 / 6)


def test_meter_state_carries_counts_and_seconds_across_a_restart():
    clock = FakeClock()
    first = Throughput(CPU, warmup=1, clock=clock)
    for seconds in (10, 1, 1):
        first.before_step()
        clock.advance(seconds)
        first.after_step(2, 20)
    with first.paused():
        state = first.state()
        clock.advance(30)
    assert state == {"steps": 3, "samples": 6, "tokens": 60, "timed_samples": 4, "timed_tokens": 40, "elapsed": 2.0}
    json.dumps(state)  # plain numbers: goes into a checkpoint as is
    again = Throughput(CPU, warmup=1, clock=clock, carried=state)  # a new process warms up again
    for seconds in (10, 3):
        again.before_step()
        clock.advance(seconds)
        again.after_step(2, 20)
    again.stop()
    assert (again.steps, again.samples, again.tokens) == (5, 10, 100)
    assert again.elapsed == 5.0 and again.rates() == (60 / 5, 6 / 5)


# ---------------------------------------------------------------------------- the training loop

class Tiny(torch.nn.Module):
    """A regression MLP with dropout (so that RNG restore matters on resume)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def forward(self, x, y):
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))


def _tiny_data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(dim=1)
    rows = [{"x": x[i], "y": y[i]} for i in range(n)]
    batches = [list(range(i, min(i + 4, n))) for i in range(0, n, 4)]
    lengths = [3 + i % 5 for i in range(n)]  # "tokens" per row: counted, not used by the model
    return rows, batches, lengths


def test_train_meter_leaves_out_warm_up_and_checkpoint_time(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_mod, "Throughput", functools.partial(Throughput, clock=clock))
    rows, batches, lengths = _tiny_data()
    calls = []

    def loss_fn(model, batch):  # step times: warm-up steps 20 s, the others 1 s
        calls.append(1)
        clock.advance(20 if len(calls) <= 2 else 1)
        return model(**batch).loss

    checkpointer = Checkpointer(tmp_path / "ck", every=3)
    real_save = checkpointer.save

    def slow_save(*args, **kwargs):
        clock.advance(100)
        return real_save(*args, **kwargs)

    checkpointer.save = slow_save
    cfg = _cfg(throughput_warmup_steps=2, log_every=5)
    torch.manual_seed(0)
    stats = train_mod.train(Tiny(), rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                            accelerator=train_mod.make_accelerator(cfg), checkpointer=checkpointer, loss_fn=loss_fn)
    timed = batches[2:]
    assert len(checkpointer.checkpoints()) == 2  # steps 6 and 9 kept (3 saved: 3, 6, 9)
    assert stats.steps == len(batches) == 12
    assert stats.tokens_per_s == pytest.approx(sum(lengths[i] for b in timed for i in b) / len(timed))
    assert stats.samples_per_s == pytest.approx(sum(len(b) for b in timed) / len(timed))


def test_loss_curve_does_not_depend_on_how_often_losses_are_read():
    logged = {1: [], 4: []}
    curves = {}
    for every in (1, 4):
        torch.manual_seed(0)
        rows, batches, lengths = _tiny_data()
        cfg = _cfg(log_every=every)
        stats = train_mod.train(Tiny(), rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                                accelerator=train_mod.make_accelerator(cfg), on_log=logged[every].append)
        curves[every] = stats.losses
    assert curves[1] == curves[4] and len(curves[1]) == 12 and all(math.isfinite(x) for x in curves[1])
    assert [e["step"] for e in logged[4]] == [4, 8, 12]
    assert [e["train/loss"] for e in logged[4]] == [curves[1][3], curves[1][7], curves[1][11]]
    assert [e["train/loss"] for e in logged[1]] == curves[1]


@pytest.mark.parametrize("every", [1, 5])
def test_diverged_step_is_exact_when_losses_are_read_in_batches(tmp_path, every):
    rows, batches, lengths = _tiny_data()
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = model(**batch).loss
        return loss * float("nan") if len(calls) == 7 else loss

    checkpointer = Checkpointer(tmp_path / "ck", every=8)
    cfg = _cfg(log_every=every)
    torch.manual_seed(0)
    with pytest.raises(train_mod.Diverged) as err:
        train_mod.train(Tiny(), rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                        accelerator=train_mod.make_accelerator(cfg), checkpointer=checkpointer, loss_fn=loss_fn)
    assert err.value.step == 7 and math.isnan(err.value.loss)
    assert len(calls) <= 10  # read at step 10 at the latest (every 5), or at once (every 1)
    assert checkpointer.checkpoints() == []  # the step-8 checkpoint of NaN weights was never written


def test_step_hooks_run_after_each_optimizer_step_with_gradients_present():
    rows, batches, lengths = _tiny_data()
    seen = []
    torch.manual_seed(0)
    model = Tiny()

    def hook(step):
        seen.append((step, model.net[0].weight.grad is not None))

    cfg = _cfg()
    train_mod.train(model, rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                    accelerator=train_mod.make_accelerator(cfg), step_hooks=[hook])
    assert seen == [(s, True) for s in range(1, 13)]


def _run(checkpointer=None, hooks=(), cfg=None):
    torch.manual_seed(0)
    model = Tiny()
    rows, batches, lengths = _tiny_data()
    cfg = cfg or _cfg(log_every=3)
    stats = train_mod.train(model, rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                            accelerator=train_mod.make_accelerator(cfg), checkpointer=checkpointer,
                            step_hooks=hooks)
    return model, stats


def test_resumed_run_reports_the_whole_run(tmp_path):
    clean_model, clean = _run()
    checkpointer = Checkpointer(tmp_path / "ck", every=None)

    def preempt_at_5(step):
        if step == 5:
            checkpointer.stop_requested = True  # as the SIGTERM / USR2 handler does

    with pytest.raises(Preempted) as err:
        _run(checkpointer, hooks=[preempt_at_5])
    assert err.value.step == 5 and err.value.saved is not None
    model, resumed = _run(Checkpointer(tmp_path / "ck", every=None))
    assert resumed.resumed_from_step == 5
    assert (resumed.steps, resumed.samples, resumed.tokens) == (clean.steps, clean.samples, clean.tokens)
    assert resumed.losses == clean.losses and len(resumed.losses) == 12
    assert resumed.tokens_per_s is not None and resumed.seconds > 0
    assert resumed.peak_memory["peak_bytes"] > 0
    for a, b in zip(model.parameters(), clean_model.parameters()):
        assert torch.equal(a, b)


def test_preempted_while_evaluating_resumes_with_no_step_left(tmp_path):
    clean_model, clean = _run()
    checkpointer = Checkpointer(tmp_path / "ck", every=None)
    model, stats = _run(checkpointer)
    assert stats.losses == clean.losses
    saved = checkpointer.save_final(model)  # what the run does when the signal comes during evaluation
    assert saved.name == "step-00000012"
    torch.manual_seed(123)  # a different init: the checkpoint must supply the weights
    model2 = Tiny()
    rows, batches, lengths = _tiny_data()
    cfg = _cfg(log_every=3)
    again = train_mod.train(model2, rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                            accelerator=train_mod.make_accelerator(cfg), checkpointer=Checkpointer(tmp_path / "ck", None))
    assert again.resumed_from_step == 12
    assert (again.steps, again.samples, again.tokens, again.losses) == (clean.steps, clean.samples, clean.tokens,
                                                                        clean.losses)
    assert again.tokens_per_s == pytest.approx(stats.tokens_per_s)
    for a, b in zip(model2.parameters(), clean_model.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- preemption guard

def test_guard_turns_sigterm_and_usr2_into_a_flag_and_restores_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    with PreemptionGuard() as guard:
        guard.check("load")  # nothing yet
        os.kill(os.getpid(), signal.SIGUSR2)
        assert guard.requested and guard.signal_name == "SIGUSR2"
        with pytest.raises(Preempted, match="SIGUSR2 while in phase 'evaluate'") as err:
            guard.check("evaluate", step=12)
        assert (err.value.phase, err.value.step, err.value.saved) == ("evaluate", 12, None)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not overwrite the first
        assert guard.signal_name == "SIGUSR2"
    assert {s: signal.getsignal(s) for s in before} == before


def test_guard_calls_a_python_handler_it_replaced_after_the_run_recorded_itself():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert guard.requested and calls == []  # e.g. submitit's requeue: not while the run still works
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_checkpointer_on_its_own_handles_usr2(tmp_path):
    with Checkpointer(tmp_path, every=None) as checkpointer:
        assert not checkpointer.stop_requested
        os.kill(os.getpid(), signal.SIGUSR2)
        assert checkpointer.stop_requested and checkpointer.signal_name == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


# ---------------------------------------------------------------------------- FLOPs and MFU

def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64))


V = 5
PEFT = {
    "full": None,
    "lora": lambda enc: __import__("peft").LoraConfig(
        task_type="SEQ_CLS" if enc else "CAUSAL_LM", r=4, target_modules=["query", "value"] if enc else ["q_proj", "v_proj"]),
    "prefix": lambda enc: __import__("peft").PrefixTuningConfig(task_type="SEQ_CLS" if enc else "CAUSAL_LM",
                                                                num_virtual_tokens=V),
    "prefix_projection": lambda enc: __import__("peft").PrefixTuningConfig(
        task_type="SEQ_CLS" if enc else "CAUSAL_LM", num_virtual_tokens=V, prefix_projection=True, encoder_hidden_size=24),
    "prompt": lambda enc: __import__("peft").PromptTuningConfig(task_type="SEQ_CLS" if enc else "CAUSAL_LM",
                                                                num_virtual_tokens=V),
    "p_tuning": lambda enc: __import__("peft").PromptEncoderConfig(task_type="SEQ_CLS" if enc else "CAUSAL_LM",
                                                                   num_virtual_tokens=V, encoder_hidden_size=24),
    "ia3": lambda enc: __import__("peft").IA3Config(
        task_type="SEQ_CLS" if enc else "CAUSAL_LM",
        target_modules=["key", "value", "output.dense"] if enc else ["k_proj", "v_proj", "down_proj"],
        feedforward_modules=["output.dense"] if enc else ["down_proj"]),
}
VIRTUAL_POSITIONS = {"prompt": V, "p_tuning": V}  # prefix adds key/values only: 0 positions


def _counted_linear_flops(model, samples: int, length: int, encoder: bool, training: bool) -> tuple[float, dict]:
    """mm + addmm FLOPs torch's FLOP counter sees in one training step (forward + backward) or eval forward.
    Attention ops (bmm, scaled_dot_product_*) are left out: the formula does not count attention scores."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.full((samples, length), 7)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if not encoder:  # as bench runs a decoder: the LM head where something is read (here the last position)
        kwargs["logits_to_keep"] = 1
    with FlopCounterMode(display=False) as counter:
        if training and encoder:
            model(**kwargs, labels=torch.zeros(samples, dtype=torch.long)).loss.backward()
        elif training:
            model(**kwargs).logits.float().logsumexp(-1).sum().backward()
        else:
            with torch.no_grad():
                model(**kwargs)
    counts = counter.get_flop_counts()
    ops = {str(k): v for k, v in counts["Global"].items()}
    # the LM head on [samples, 1, hidden] (logits_to_keep=1) is dispatched as a bmm: still a linear layer
    head = sum(v for name, by_op in counts.items() if name.endswith("lm_head")
               for op, v in by_op.items() if str(op) == "aten.bmm")
    if head:
        ops["aten.bmm"] -= head
    return float(ops.pop("aten.mm", 0) + ops.pop("aten.addmm", 0) + head), ops


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("method", list(PEFT))
def test_flops_match_torchs_flop_counter(method, kind):
    import peft

    encoder = kind == "encoder"
    torch.manual_seed(0)
    model = _bert() if encoder else _llama()
    if PEFT[method] is not None:
        model = peft.get_peft_model(model, PEFT[method](encoder))
    model.train()
    profile = flops.flop_profile(model)
    assert model.training  # the probe put the mode back
    assert profile.probed and profile.virtual_positions == VIRTUAL_POSITIONS.get(method, 0)
    samples, length = 5, 11  # neither probe shape
    for training in (True, False):
        counted, others = _counted_linear_flops(model, samples, length, encoder, training)
        predicted = (profile.train_flops if training else profile.eval_flops)(samples * length, samples, batches=1)
        deviation = (predicted - counted) / counted
        print(f"{kind} {method} {'train' if training else 'eval'}: counter {counted:.0f}, formula {predicted:.0f}, "
              f"deviation {100 * deviation:+.3f}%, not compared: {others}")
        assert abs(deviation) < 0.01
        assert set(others) <= {"aten.bmm", "aten.baddbmm"}  # attention / rotary: not linear layers


def test_flops_follow_which_weights_train():
    import peft

    torch.manual_seed(0)
    full = _bert()
    n_linear = sum(m.weight.numel() for m in full.modules() if isinstance(m, torch.nn.Linear))
    profile = flops.flop_profile(full)
    pooled = full.bert.pooler.dense.weight.numel() + full.classifier.weight.numel()
    # full fine-tuning: every weight trained, every input (embeddings included) needs its gradient: 6N per
    # weight, at every position except BERT's pooler and classifier, which run once per sample
    assert profile.train_per_token == 6 * (n_linear - pooled)
    assert profile.train_per_sample == 6 * pooled and profile.eval_per_sample == 2 * pooled
    lora = peft.get_peft_model(_bert(), PEFT["lora"](True))
    lp = flops.flop_profile(lora)
    assert lp.train_per_token < 0.75 * profile.train_per_token  # frozen weights: no weight gradients


def test_precision_picks_the_peak():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "tf32") == 494.7e12
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 67e12
    assert flops.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert flops.peak_flops("NVIDIA A100-SXM4-40GB", "fp16") == 312e12
    assert flops.peak_flops("Tesla V100-SXM2-16GB", "bf16") is None
    assert flops.peak_flops("Tesla V100-SXM2-16GB", "tf32") == 15.7e12  # no TF32 units: fp32 runs
    assert flops.peak_flops("Some Future GPU", "bf16") is None
    with pytest.raises(ValueError):
        flops.peak_flops("NVIDIA H100", "int8")
    assert flops.matmul_precision("bf16", CPU) == "bf16"
    assert flops.matmul_precision("no", CPU) == "fp32"
    cuda = torch.device("cuda")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert flops.matmul_precision("no", cuda) == "fp32"
        torch.set_float32_matmul_precision("high")
        assert flops.matmul_precision("no", cuda) == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_mfu_section_by_hand():
    profile = flops.FlopProfile(train_per_token=600.0, eval_per_token=200.0, train_per_sample=60.0,
                                  eval_per_sample=20.0, virtual_positions=20, train_per_batch=1000.0,
                                  eval_per_batch=0.0)
    assert flops.processed_tokens(100, 4, 20) == 180
    cuda = torch.device("cuda")
    section = flops.mfu_section(profile, device=cuda, device_name="NVIDIA H100 80GB HBM3", precision="bf16",
                                  virtual_positions=20, train_rates=(1e9, 1e7, 10), eval_rates=(2e9, 2e7),
                                  processes=2)
    train_flops = 600 * (1e9 + 20 * 1e7) + 60 * 1e7 + 1000 * 1e6
    assert section["mfu"] == pytest.approx(train_flops / 2 / 989.4e12)
    assert section["eval_mfu"] == pytest.approx((200 * (2e9 + 20 * 2e7) + 20 * 2e7) / 989.4e12)
    assert "dense bf16 989.4 TFLOP/s" in section["mfu_formula"] and "20 virtual per sequence" in section["mfu_formula"]
    # multiple choice: 2 sequences per training row, 3 per scored row, each with the virtual positions and the
    # per-sequence layers; the prompt encoder still runs once per batch
    choices = flops.mfu_section(profile, device=cuda, device_name="NVIDIA H100 80GB HBM3", precision="bf16",
                                virtual_positions=20, train_rates=(1e9, 1e7, 10), eval_rates=(2e9, 2e7),
                                processes=2, sequences_per_sample=(2.0, 3.0))
    train_flops = 600 * (1e9 + 20 * 2e7) + 60 * 2e7 + 1000 * 1e6
    assert choices["mfu"] == pytest.approx(train_flops / 2 / 989.4e12)
    assert choices["eval_mfu"] == pytest.approx((200 * (2e9 + 20 * 6e7) + 20 * 6e7) / 989.4e12)
    assert (choices["train_sequences_per_sample"], choices["eval_sequences_per_sample"]) == (2.0, 3.0)
    on_cpu = flops.mfu_section(profile, device=CPU, device_name="AMD EPYC", precision="fp32", virtual_positions=0,
                                 train_rates=None, eval_rates=(1.0, 1.0))
    assert on_cpu["mfu"] is None and on_cpu["eval_mfu"] is None and on_cpu["train_flops_per_token"] is None


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning"])  # the others add nothing (probed above)
def test_configured_methods_claim_the_virtual_positions_the_model_processes(compose, method):
    """What a method says it adds to every sample (adapted.virtual_positions, used for processed tokens and
    MFU) is what the adapted model's position-wise layers actually process."""
    from bench.run import prepare

    cfg = compose(f"method={method}", "trainer.train_samples=16", "trainer.eval_samples=16")
    adapted = prepare(cfg).adapted
    profile = flops.flop_profile(adapted.model)
    assert profile.virtual_positions == adapted.virtual_positions
    assert profile.virtual_positions == (cfg.method.peft.num_virtual_tokens if method in ("prompt", "ptuning") else 0)


def test_loss_curve_equals_a_plain_pytorch_loop():
    """The loop (accelerate-prepared, losses read in batches, wrappers bypassed where they add nothing)
    computes exactly what a hand-written PyTorch loop computes."""
    from transformers import get_linear_schedule_with_warmup

    rows, batches, lengths = _tiny_data()
    cfg = _cfg(log_every=5, warmup_ratio=0.25, weight_decay=0.01)
    torch.manual_seed(0)
    stats = train_mod.train(Tiny(), rows, batches, lengths, _stack, lr=1e-2, trainer_cfg=cfg,
                            accelerator=train_mod.make_accelerator(cfg))
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, 3, 12)
    losses = []
    for batch in train_mod.batch_loader(rows, batches, _stack):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert stats.losses == losses


def test_generation_eval_flops_count_the_generated_tokens(compose, monkeypatch):
    """Eval FLOPs and MFU of a generation task count the prompt tokens and every generated token (each is read
    once to produce the next); eval_tokens_per_s stays the prompt tokens."""
    from bench.evaluation import Evaluation
    from bench.run import execute

    profile = flops.FlopProfile(train_per_token=600.0, eval_per_token=200.0, train_per_sample=0.0,
                                  eval_per_sample=20.0, virtual_positions=0)

    def eval_mfu(generated_per_s):
        ev = Evaluation("validation", [], [], [], [], {}, tokens_per_s=1e9, samples_per_s=1e7,
                        generate_tokens_per_s=generated_per_s)
        return flops.mfu_section(profile, device=torch.device("cuda"), device_name="NVIDIA H100 80GB HBM3",
                                   precision="bf16", virtual_positions=0, train_rates=None,
                                   eval_rates=ev.flop_rates(8))["eval_mfu"]

    assert eval_mfu(None) == pytest.approx((200 * 1e9 + 20 * 1e7) / 989.4e12)           # scoring: inputs only
    assert eval_mfu(5e8) == pytest.approx((200 * (1e9 + 5e8) + 20 * 1e7) / 989.4e12)    # + 0.5e9 generated/s
    assert eval_mfu(1e9) > eval_mfu(5e8) > eval_mfu(None)

    # a real generation run hands mfu_section the prompt + generated tokens per second
    seen = {}
    real = flops.mfu_section

    def spy(profile, **kwargs):
        seen.update(kwargs)
        return real(profile, **kwargs)

    monkeypatch.setattr(flops, "mfu_section", spy)
    cfg = compose("task=e2e_nlg", "model=tiny-llama", "method=lora", "trainer.eval_samples=4",
                  "task.generation.max_new_tokens=4", "trainer.train_samples=8")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    tput = result["throughput"]
    assert tput["generated_tokens"] > 0
    assert seen["eval_rates"][0] == pytest.approx(tput["eval_tokens_per_s"] + tput["generate_tokens_per_s"])
    assert seen["eval_rates"][1:] == (tput["eval_samples_per_s"], cfg.trainer.eval_batch_size)
