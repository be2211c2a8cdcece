"""Where a CPU run's memory goes: RSS split into anonymous (allocated) and file-backed (mapped) pages at
each phase of a run, what the training phase adds, and the activations autograd keeps for backward.

The run is built as bench builds it (Hydra config, bench.run's steps of `prepare`, bench.train.train);
snapshots are taken between the steps of `prepare` and, inside training, through the loss function
(before / after the forward) and a step hook (after optimizer.step, gradients still held). A sampler
thread reads /proc/self/status (RssAnon, RssFile) and glibc's mallinfo2 every --sample-ms during
training: the peak of the anonymous and the file-backed part separately, and the peak of the bytes
malloc has handed out and not had back ("live"), against which the RSS shows the allocator's slack.
Each snapshot also splits file pages by mapping: Arrow files, safetensors weights, shared libraries. Saved-for-backward tensors are counted with
torch.autograd.graph.saved_tensors_hooks (each storage once, parameters left out) and compared with
an analytic estimate for a BERT encoder layer.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/memory_breakdown.py                    # full,lora; MiniLM SST-2
    OMP_NUM_THREADS=1 .venv/bin/python scripts/memory_breakdown.py --methods lora --steps 20
    MALLOC_ARENA_MAX=2 OMP_NUM_THREADS=1 .venv/bin/python scripts/memory_breakdown.py --methods full

The glibc variables (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) are read at
process start: set them on the command line, one process per variant.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402

MiB = 2 ** 20
PROC = psutil.Process()


def smaps_rollup() -> dict[str, int]:
    """Rss / Anonymous (anonymous resident) / Pss_File of the whole process in bytes, from
    /proc/self/smaps_rollup (walks the page tables: a cross-check, not for frequent sampling)."""
    out = {}
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Anonymous", "Rss_Anon", "Rss_File", "Pss_File", "Swap"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def file_rss_by_kind() -> dict[str, int]:
    """Resident bytes of file mappings by kind (/proc/self/smaps): Arrow files (datasets' memory-mapped
    tables), safetensors (weights), shared libraries, other files."""
    out = {"arrow": 0, "safetensors": 0, "lib": 0, "other_file": 0}
    kind = None
    try:
        with open("/proc/self/smaps") as fh:
            for line in fh:
                first = line.split(None, 5)
                if len(first) >= 5 and "-" in first[0] and ":" not in first[0]:  # a mapping's header line
                    path = first[5].strip() if len(first) == 6 else ""
                    if not path.startswith("/"):
                        kind = None
                    elif path.endswith(".arrow"):
                        kind = "arrow"
                    elif path.endswith(".safetensors"):
                        kind = "safetensors"
                    elif ".so" in path:
                        kind = "lib"
                    else:
                        kind = "other_file"
                elif kind and line.startswith("Rss:"):
                    out[kind] += int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def status(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in bytes. RssAnon / RssFile / RssShmem (Linux >= 4.5) split VmRSS into
    anonymous pages (malloc, Python objects, tensors), file-backed pages (shared libraries, mmapped
    Arrow / safetensors files) and shared memory; they are kernel counters, cheap to read."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0]) * 1024
    return out


def mallinfo() -> dict[str, int] | None:
    """glibc heap: bytes in use (uordblks) and free but kept (fordblks), mmapped chunks (hblkhd)."""
    try:
        libc = ctypes.CDLL("libc.so.6")

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                         "uordblks", "fordblks", "keepcost")]

        libc.mallinfo2.restype = MallInfo2
        m = libc.mallinfo2()
        return {"heap_in_use": m.uordblks, "heap_free_kept": m.fordblks, "mmapped_chunks": m.hblkhd,
                "arena": m.arena}
    except (OSError, AttributeError):
        return None


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


ROWS: list[dict] = []


def snap(label: str, method: str = "", **extra) -> dict:
    rollup = smaps_rollup()
    st = status("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    row = {"method": method, "phase": label, "rss": PROC.memory_info().rss,
           "anon": st.get("RssAnon"), "file": st.get("RssFile"), "shmem": st.get("RssShmem"),
           "smaps_anonymous": rollup.get("Anonymous"), "hwm": st.get("VmHWM")}
    try:
        row["uss"] = PROC.memory_full_info().uss
    except (psutil.AccessDenied, AttributeError):
        row["uss"] = None
    heap = mallinfo()
    if heap:
        row.update(heap)
    row.update(file_rss_by_kind())
    row.update(extra)
    ROWS.append(row)
    return row


class Sampler:
    """Peaks seen by a thread every `period` s: VmRSS, RssAnon, RssFile (/proc/self/status) and the bytes
    malloc has handed out and not had back (glibc mallinfo2: uordblks + hblkhd, "live"). The thread
    runs while torch ops release the GIL, so it sees the middle of forward / backward."""

    def __init__(self, period: float):
        self.period = period
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "malloc_live": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = status("VmRSS", "RssAnon", "RssFile")
            heap = mallinfo()
            if heap:
                r["malloc_live"] = heap["heap_in_use"] + heap["mmapped_chunks"]
            for k in self.peak:
                self.peak[k] = max(self.peak[k], r.get(k, 0))
            self.samples += 1
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- activations

class SavedTensors:
    """Bytes of the tensors autograd saves for backward during one forward: each storage once,
    parameters (their storages) left out."""

    def __init__(self, params):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.storages: dict[int, int] = {}
        self.by_dtype: dict[str, int] = {}
        self.by_shape: dict[str, list] = {}

    def pack(self, t):
        try:
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr not in self.param_ptrs and ptr not in self.storages:
                self.storages[ptr] = s.nbytes()
                self.by_dtype[str(t.dtype)] = self.by_dtype.get(str(t.dtype), 0) + s.nbytes()
                key = f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
                entry = self.by_shape.setdefault(key, [0, 0])
                entry[0] += 1
                entry[1] += s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def expected_activation_bytes(config, batch: int, length: int, full: bool) -> int:
    """Textbook saved-for-backward bytes of a BERT encoder in fp32 with dropout (Korthikanti et al. 2022's
    per-layer count with 4-byte values and 1-byte dropout masks; s = length, b = batch, h = hidden, a = heads):
      sbh terms: attention input 4, Q and K 8, V 4, context (output-dense input) 4, dropout mask 1, LayerNorm
      input 4, GELU input (4h) 16, GELU output (FFN-out input, 4h) 16, dropout mask 1, LayerNorm input 4
      = 62 sbh with a trained base; a frozen linear saves no input (autograd keeps a matmul's input only
      when its weight needs a gradient), so a frozen base drops the attention input, the context and the
      GELU output: 62 - 4 - 4 - 16 = 38 sbh;
      attention (eager, or SDPA's math path, which CPU training with dropout takes): softmax output 4,
      dropout mask 1, dropout output 4 = 9 a s^2 b;
    plus the embeddings (LayerNorm input 4 + dropout mask 1 = 5 sbh). PyTorch's extra copies (scaled Q,
    reshaped operands of the attention bmm's, LoRA's dropout outputs) are not in it."""
    h, a, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    ffn = config.intermediate_size / h  # 4 for BERT / MiniLM
    sbh = batch * length * h
    per_layer_h = (30 + 8 * ffn) if full else (26 + 3 * ffn)  # 62 / 38 at ffn = 4
    per_layer = per_layer_h * sbh + 9 * a * length * length * batch
    return int(layers * per_layer + 5 * sbh)


# --------------------------------------------------------------------------- one method

def measure(method: str, args) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from bench import batches as batching
    from bench import models, shapes, tasks
    from bench.config import CONF_DIR
    from bench.measure.storage import count_params
    from bench.run import apply_method
    from bench.train import make_accelerator, train

    overrides = [f"model={args.model}", f"method={method}", f"task={args.task}", "logger=none",
                 f"trainer.batch_size={args.batch_size}", f"trainer.max_length={args.max_length}",
                 f"trainer.train_samples={args.train_samples}", "trainer.device=cpu", f"trainer.max_steps={args.steps}",
                 f"trainer.log_every={args.steps}", "trainer.throughput_warmup_steps=0"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    t, m, tr, cache = cfg.task, cfg.model, cfg.trainer, cfg.paths.cache_dir
    out = {"method": method}

    # the steps of bench.run.prepare, one snapshot after each
    shape = shapes.get(t.shape)
    data = tasks.load_task(t, cfg.paths.data_dir, tr, cache)
    snap("data loaded", method)
    tokenizer = models.load_tokenizer(m, cache)
    model = models.load_model(m, t, tokenizer, cache)
    snap("model loaded", method)
    epochs, total_steps = batching.budget(len(data.train), tr.batch_size, tr.epochs, tr.get("min_steps"), tr.max_steps)
    adapted = apply_method(cfg, model, shape, tokenizer, data, total_steps)
    model = adapted.model
    snap("method applied", method)
    pipeline = shape.pipeline(t, m.kind, tokenizer, tr.max_length, adapted.prompt_prefix)
    train_ds = pipeline.tokenize(data.train)
    lengths = pipeline.train_lengths(train_ds) if pipeline.train_lengths else list(train_ds["length"])
    eval_ds = pipeline.tokenize(data.splits["validation"])
    snap("tokenized", method, train_rows=len(train_ds), eval_rows=len(eval_ds))

    total, trainable = count_params(model)
    out.update(total_params=total, trainable_params=trainable,
               param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
               grad_adam_bytes_expected=trainable * 4 * 3)
    base_config = getattr(model, "base_model", model)
    base_config = getattr(base_config, "config", None) or model.config
    attn_impl = getattr(base_config, "_attn_implementation", None)
    out["attn_implementation"] = attn_impl

    # the run's batch order (seed 0, length-grouped); the epoch's longest batch moved to step
    # --longest-at, so a short run meets the activation peak a whole epoch would, after the first
    # optimizer step has created AdamW's states (as in a real run, where it comes at a random step)
    order = batching.train_batches(lengths, tr.batch_size, cfg.seed, tr.group_by_length, epochs)
    longest = max(range(len(order)), key=lambda j: max(lengths[i] for i in order[j]))
    epoch_max_len = max(lengths[i] for i in order[longest])
    if args.longest_at:
        rest = [b for j, b in enumerate(order) if j != longest]
        order = rest[:args.longest_at - 1] + [order[longest]] + rest[args.longest_at - 1:]
    order = order[:args.steps]
    step_len = [max(lengths[i] for i in b) for b in order]
    out.update(epoch_max_len=epoch_max_len, step_max_len=step_len, epoch_batches=len(order))

    accelerator = make_accelerator(tr)
    params = [p for p in model.parameters() if p.requires_grad]
    saved: list[int] = []
    after_forward: list[dict] = []
    state = {"step": 0}

    def loss_fn(mdl, batch):
        state["step"] += 1
        first = state["step"] == 1
        if first:
            snap("train start (before step 1 forward)", method)
        counter = SavedTensors(mdl.parameters())
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            loss = pipeline.loss(mdl, batch) if pipeline.loss else mdl(**batch).loss
        saved.append(counter.total)
        if first or state["step"] == args.longest_at:
            row = snap(f"step {state['step']} after forward (activations held)", method, saved_bytes=counter.total,
                       batch_len=int(batch["input_ids"].shape[1]), saved_by_dtype=dict(counter.by_dtype),
                       saved_by_shape=sorted(counter.by_shape.items(), key=lambda kv: -kv[1][1])[:12])
            after_forward.append(row)
        return loss

    def hook(step: int) -> None:
        if step in (1, args.longest_at, args.steps):
            grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
            snap(f"after step {step} (optimizer.step, grads held)", method, grad_bytes=grads)

    modules_before = set(sys.modules)
    with Sampler(args.sample_ms / 1000) as sampler:
        t0, c0 = time.perf_counter(), time.process_time()
        stats = train(model, train_ds, order, lengths, pipeline.train_collate, lr=cfg.method.lr, trainer_cfg=tr,
                      accelerator=accelerator, loss_fn=loss_fn, step_hooks=[hook, *(adapted.step_hooks or [])])
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    snap(f"after train ({args.steps} steps)", method)
    import gc

    gc.collect()
    malloc_trim()
    snap("after train + gc + malloc_trim", method)
    new_modules = sorted(set(sys.modules) - modules_before)
    expected = [expected_activation_bytes(base_config, len(b), L, method == "full") for b, L in zip(order, step_len)]
    out.update(train_seconds=seconds, train_cpu_seconds=cpu_seconds, bench_memory=stats.peak_memory, sampler_peak=sampler.peak,
               sampler_samples=sampler.samples, saved_bytes=saved, expected_saved_bytes=expected,
               modules_imported_in_training=len(new_modules), new_modules_sample=new_modules[:15],
               saved_by_shape=max(after_forward, key=lambda r: r["saved_bytes"])["saved_by_shape"] if after_forward else [])
    if args.eval:
        from bench import evaluation
        from bench.measure.memory import PeakMemory

        mem = PeakMemory(torch.device("cpu"))
        mem.reset()
        snap("eval start", method)
        evaluation.evaluate(model, shape, t, pipeline, "validation", data.splits["validation"], eval_ds,
                            batch_size=tr.eval_batch_size, accelerator=accelerator)
        snap("after eval", method)
        out["eval_memory"] = mem.read()
    del model, adapted, stats
    return out


def fmt(v) -> str:
    return "" if v is None else f"{v / MiB:8.1f}"


def main() -> None:
    snap("start (python + psutil)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-samples", type=int, default=20000, help="trainer.train_samples (quick: 20,000)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--longest-at", type=int, default=2,
                        help="move the epoch's longest batch to this step (1-based; 0 = the run's own order)")
    parser.add_argument("--sample-ms", type=float, default=5.0)
    parser.add_argument("--eval", action="store_true", help="also evaluate once (eval phase figures)")
    parser.add_argument("--json", default=None, help="write every snapshot and summary here")
    args = parser.parse_args()

    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from bench.config import register_resolvers
    from bench.run import prepare  # noqa: F401  (imports what a run imports)

    register_resolvers()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    snap("after imports")
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                                          "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD") if os.environ.get(k)}
    summaries = [measure(method, args) for method in args.methods.split(",")]

    print(f"env: {env}  torch threads {torch.get_num_threads()}")
    print(f"{'method':<6} {'phase':<42} {'RSS':>8} {'anon':>8} {'file':>8} {'USS':>8} {'VmHWM':>8} "
          f"{'heap use':>8} {'heapfree':>8} {'mmapped':>8} {'arrow':>7} {'weights':>7} {'libs':>7}  (MiB)")
    for r in ROWS:
        print(f"{r['method']:<6} {r['phase']:<42} {fmt(r['rss'])} {fmt(r['anon'])} {fmt(r['file'])} {fmt(r['uss'])} "
              f"{fmt(r['hwm'])} {fmt(r.get('heap_in_use'))} {fmt(r.get('heap_free_kept'))} {fmt(r.get('mmapped_chunks'))}"
              f"{fmt(r.get('arrow'))[1:]}{fmt(r.get('safetensors'))[1:]}{fmt(r.get('lib'))[1:]}")
    for s in summaries:
        bm = s["bench_memory"]
        k = max(range(len(s["saved_bytes"])), key=s["saved_bytes"].__getitem__)
        first_saved, first_exp = s["saved_bytes"][k], s["expected_saved_bytes"][k]
        print(f"\n[{s['method']}] params {s['total_params']:,} ({s['param_bytes'] / MiB:.1f} MiB), trainable "
              f"{s['trainable_params']:,}: grads + AdamW states {s['grad_adam_bytes_expected'] / MiB:.1f} MiB; "
              f"attention {s['attn_implementation']}")
        print(f"  bench train phase: peak {bm.get('peak_bytes', 0) / MiB:.1f} MiB, added "
              f"{(bm.get('added_bytes') or 0) / MiB:.1f} MiB ({s['train_seconds']:.1f} s wall, {s['train_cpu_seconds']:.1f} s CPU "
              f"incl. the sampler, {len(s['step_max_len'])} steps)")
        print(f"  sampler peaks during training (every {args.sample_ms:g} ms, {s['sampler_samples']} samples): "
              + ", ".join(f"{k} {v / MiB:.1f}" for k, v in s["sampler_peak"].items()) + " MiB")
        print(f"  step max lengths: {s['step_max_len']}")
        print(f"  saved for backward, largest at step {k + 1} (len {s['step_max_len'][k]}, epoch max "
              f"{s['epoch_max_len']}): measured {first_saved / MiB:.1f} MiB, textbook {first_exp / MiB:.1f} MiB")
        print("  saved tensors of that step by shape (count, MiB): " + "; ".join(
            f"{k} x{n} {b / MiB:.1f}" for k, (n, b) in s["saved_by_shape"]))
        print(f"  modules imported during training: {s['modules_imported_in_training']} {s['new_modules_sample']}")
        if "eval_memory" in s:
            print(f"  eval phase: {s['eval_memory']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "args": vars(args), "rows": ROWS, "summaries": summaries}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
