"""FLOPs and MFU: linear-layer matmul FLOPs from the model's structure over the device's dense peak."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.measure.storage import param_count  # a 4-bit weight's numel() is half its count


# Dense (no sparsity) peaks from the vendors' datasheets, TFLOP/s, by the precision of the matmuls:
# fp32 (CUDA cores), tf32 / bf16 / fp16 (tensor cores, fp32 accumulate). Matched against
# torch.cuda.get_device_name() by substring, first match wins ("H100 PCIe" / "H100 NVL" before
# "H100"). None: the GPU has no such unit (V100/T4: no bf16; tf32 falls back to fp32 there).
# A10G: AWS publishes no datasheet; the figures are the commonly quoted ones.
PEAK_TFLOPS = [
    # name          fp32   tf32    bf16    fp16
    ("H200",        67.0, 494.7,  989.4,  989.4),
    ("H100 PCIe",   51.2, 378.0,  756.0,  756.0),
    ("H100 NVL",    60.0, 417.5,  835.0,  835.0),
    ("H100",        67.0, 494.7,  989.4,  989.4),
    ("A100",        19.5, 156.0,  312.0,  312.0),
    ("L40S",        91.6, 183.0,  362.0,  362.0),
    ("L40",         90.5,  90.5,  181.0,  181.0),
    ("L4",          30.3,  60.0,  121.0,  121.0),
    ("A10G",        31.2,  35.0,   70.0,   70.0),
    ("A10",         31.2,  62.5,  125.0,  125.0),
    ("RTX 4090",    82.6,  82.6,  165.2,  165.2),
    ("RTX 3090",    35.6,  35.6,   71.0,   71.0),
    ("V100",        15.7,  None,   None,  125.0),
    ("T4",           8.1,  None,   None,   65.0),
]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def matmul_precision(mixed_precision: str | None, device: torch.device) -> str:
    """The precision the model's matmuls run in: accelerate's mixed_precision ("no" | "bf16" | "fp16"),
    and for fp32 on CUDA whether TF32 tensor cores are allowed (torch.backends / set_float32_matmul_precision)."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    if device.type != "cuda":
        return "fp32"
    setting = torch.get_float32_matmul_precision()
    if setting == "medium":
        return "bf16"
    if setting == "high" or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of a GPU for matmuls in `precision`; None for an unknown GPU or unit."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    for key, *values in PEAK_TFLOPS:
        if key in device_name:
            table = dict(zip(PRECISIONS, values))
            value = table[precision]
            if value is None and precision == "tf32":  # pre-Ampere: TF32 is not used, fp32 runs
                value = table["fp32"]
            return None if value is None else value * 1e12
    return None


def processed_tokens(tokens: float | None, samples: float | None, virtual_positions: int) -> float | None:
    """Positions that pass through every layer: real tokens plus each sample's virtual positions (soft
    prompt and P-tuning add num_virtual_tokens; prefix tuning adds key/values only, so 0). Works on
    counts and on rates (tokens/s, samples/s) alike."""
    if tokens is None:
        return None
    return tokens + virtual_positions * (samples or 0)


@dataclass(frozen=True)
class FlopProfile:
    """Matmul FLOPs of the linear layers: per processed position, per sample and per batch.

    per_token: layers that run at every position (real tokens and virtual prompt positions);
    per_sample: layers that run a fixed number of times per sample whatever its length (a
    classification head on one pooled position; prefix tuning's projection MLP on each sample's
    virtual tokens); per_batch: layers that run once per forward pass (P-tuning's prompt encoder,
    which PEFT runs on one copy of the virtual tokens and repeats over the batch).
    virtual_positions: positions per sample beyond the real tokens that the position-wise layers
    were seen to process (soft prompt / P-tuning: num_virtual_tokens; others 0).
    """
    train_per_token: float
    eval_per_token: float
    train_per_sample: float
    eval_per_sample: float
    virtual_positions: int
    train_per_batch: float = 0.0
    eval_per_batch: float = 0.0
    probed: bool = True

    def train_flops(self, tokens: float, samples: float, batches: float = 0.0,
                    virtual_positions: int | None = None) -> float:
        v = self.virtual_positions if virtual_positions is None else virtual_positions
        return (self.train_per_token * processed_tokens(tokens, samples, v) + self.train_per_sample * samples
                + self.train_per_batch * batches)

    def eval_flops(self, tokens: float, samples: float, batches: float = 0.0,
                   virtual_positions: int | None = None) -> float:
        v = self.virtual_positions if virtual_positions is None else virtual_positions
        return (self.eval_per_token * processed_tokens(tokens, samples, v) + self.eval_per_sample * samples
                + self.eval_per_batch * batches)


def _matmul_modules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    """(module, in_features) for every module that is one matmul with its weight: nn.Linear and
    transformers' Conv1D (GPT-2 style, weight stored as in x out)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            found.append((module, module.in_features))
        elif Conv1D and isinstance(module, Conv1D):
            found.append((module, module.weight.shape[0]))
    return found


def _probe(model: torch.nn.Module, modules, batch: int, length: int) -> list[tuple[int, int]]:
    """Rows each matmul module processes in one forward pass on `batch` x `length` tokens, and how many
    of those rows had an input that requires grad (so backward computes the input gradient)."""
    rows = [[0, 0] for _ in modules]

    def hook(i, in_features):
        def record(module, args, output):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                n = x.numel() // in_features
                rows[i][0] += n
                rows[i][1] += n if x.requires_grad else 0
        return record

    handles = [m.register_forward_hook(hook(i, f)) for i, (m, f) in enumerate(modules)]
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None) or 2
    ids = torch.full((batch, length), min(100, vocab - 1), dtype=torch.long, device=device)
    try:
        with torch.enable_grad():
            try:  # a causal LM's head runs only where a score or loss is read (bench.shapes.base), not everywhere
                model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
            except TypeError:  # no such argument (encoders, older models): the forward as it is
                for r in rows:
                    r[0] = r[1] = 0
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    return [tuple(r) for r in rows]


def _structural_profile(modules) -> FlopProfile:
    """Fallback when the model cannot be probed: every matmul layer at every position with an input that
    needs its gradient (an upper bound for frozen-base methods), no per-sample layers."""
    train = sum(2 * param_count(m.weight) * (2 + m.weight.requires_grad) for m, _ in modules)
    evaluation = sum(2 * param_count(m.weight) for m, _ in modules)
    return FlopProfile(float(train), float(evaluation), 0.0, 0.0, 0, probed=False)


def flop_profile(model: torch.nn.Module, lengths: tuple[int, int] = (8, 16),
                 batches: tuple[int, int] = (2, 3)) -> FlopProfile:
    """Linear-layer matmul FLOPs of one training step (forward + backward) and one eval forward.

    Each matmul layer with N weights costs, per row it processes: 2N forward; in backward 2N for the
    weight gradient when the weight is trained, and 2N for the input gradient when its input depends
    on a trained parameter (autograd computes nothing else). Which rows a layer processes and whether
    its input requires grad are read by forward hooks in three tiny forward passes (eval mode, so no
    dropout draws from the RNG; nothing is trained) at two lengths and two batch sizes: each layer's
    rows = a * samples * length + b * samples + c, so a is per real token, b per sample (virtual
    positions, pooled heads, per-sample prompt encoders), c per batch. Attention scores (and other
    non-linear-layer FLOPs) are not counted. Tested against torch.utils.flop_counter.FlopCounterMode.

    A causal LM is probed with logits_to_keep=1, as bench runs it: its LM head counts once per sample. That is
    exact where one position is read (verbalizer classification) and a lower bound where a few are (the answer
    tokens of multiple choice and generation training, each generated token): MFU is understated, never
    inflated by head work that does not run.
    """
    modules = _matmul_modules(model)
    (l1, l2), (s1, s2) = lengths, batches
    was_training = model.training
    model.eval()
    try:
        base, longer, wider = (_probe(model, modules, s1, l1), _probe(model, modules, s1, l2),
                               _probe(model, modules, s2, l1))
    except Exception:  # noqa: BLE001 - e.g. an encoder-decoder model that needs decoder inputs
        return _structural_profile(modules)
    finally:
        model.train(was_training)
    train = {"token": 0.0, "sample": 0.0, "batch": 0.0}
    evaluation = dict(train)
    ratios = []
    for (module, _), *probes in zip(modules, base, longer, wider):
        n = param_count(module.weight)
        per_row_train = 2 * n * (1 + module.weight.requires_grad)
        for k, cost_train, cost_eval in ((0, per_row_train, 2 * n), (1, 2 * n, 0)):  # all rows; input-grad rows
            r0, r_long, r_wide = (p[k] for p in probes)
            a = (r_long - r0) / (s1 * (l2 - l1))
            b = (r_wide - r0) / (s2 - s1) - a * l1
            c = r0 - s1 * (a * l1 + b)
            for key, rows in (("token", a), ("sample", b), ("batch", c)):
                train[key] += cost_train * rows
                evaluation[key] += cost_eval * rows
            if k == 0 and a > 0:
                ratios.append(b / a)
    ratios.sort()
    virtual = round(ratios[len(ratios) // 2]) if ratios else 0
    # per processed position: the virtual positions' share of the per-sample cost moves to per token
    return FlopProfile(train["token"], evaluation["token"], train["sample"] - train["token"] * virtual,
                       evaluation["sample"] - evaluation["token"] * virtual, virtual, train["batch"], evaluation["batch"])


def train_flops_per_token(model: torch.nn.Module) -> float:
    """Linear-layer FLOPs of a training step per processed position (see flop_profile)."""
    return flop_profile(model).train_per_token


def eval_flops_per_token(model: torch.nn.Module) -> float:
    """Linear-layer FLOPs of an eval forward per processed position (see flop_profile)."""
    return flop_profile(model).eval_per_token


def mfu(flops_per_token: float, tokens_per_s: float | None, device: torch.device, device_name: str,
        precision: str = "bf16") -> float | None:
    """Achieved / peak FLOP/s for a FLOPs-per-token figure and processed positions per second. None on the
    CPU (no trustworthy peak) or for an unknown GPU."""
    if tokens_per_s is None or device.type != "cuda":
        return None
    peak = peak_flops(device_name, precision)
    return flops_per_token * tokens_per_s / peak if peak else None


def mfu_section(profile: FlopProfile, *, device: torch.device, device_name: str, precision: str,
                virtual_positions: int, train_rates: tuple | None, eval_rates: tuple | None,
                processes: int = 1, sequences_per_sample: tuple[float, float] = (1.0, 1.0)) -> dict:
    """result["throughput"] FLOPs and MFU fields.

    *_rates = (real tokens/s, samples/s, samples per batch) of all processes together (train_rates None
    when nothing was trained; samples per batch None counts per-batch FLOPs once per sample, an upper
    bound); each of `processes` devices does 1/processes of the training work. sequences_per_sample =
    (train, eval): model sequences per sample (multiple choice reads one per choice), each of which gets the
    virtual positions and the per-sample layers; the profile was probed one sequence per sample.
    """
    peak = peak_flops(device_name, precision) if device.type == "cuda" else None

    def utilisation(per_token, per_sample, per_batch, rates, share, sequences):
        if rates is None or rates[0] is None or not peak:
            return None
        tokens_per_s, samples_per_s, per_batch_samples = (tuple(rates) + (None,))[:3]
        samples_per_s = samples_per_s or 0.0
        batches_per_s = samples_per_s / per_batch_samples if per_batch_samples else samples_per_s
        sequences_per_s = samples_per_s * sequences
        achieved = (per_token * processed_tokens(tokens_per_s, sequences_per_s, virtual_positions)
                    + per_sample * sequences_per_s + per_batch * batches_per_s)
        return achieved / share / peak

    where = f"{device_name} dense {precision} {peak / 1e12:g} TFLOP/s" if peak else \
        f"none for {device.type} {device_name!r} at {precision}, so no MFU"
    trained = train_rates is not None
    return {
        "train_flops_per_token": profile.train_per_token if trained else None,
        "train_flops_per_sample": profile.train_per_sample if trained else None,
        "train_flops_per_batch": profile.train_per_batch if trained else None,
        "eval_flops_per_token": profile.eval_per_token,
        "eval_flops_per_sample": profile.eval_per_sample,
        "eval_flops_per_batch": profile.eval_per_batch,
        "virtual_positions": virtual_positions,
        "precision": precision,
        "peak_flops": peak,
        "train_sequences_per_sample": sequences_per_sample[0] if trained else None,
        "eval_sequences_per_sample": sequences_per_sample[1],
        "mfu": utilisation(profile.train_per_token, profile.train_per_sample, profile.train_per_batch,
                           train_rates, processes, sequences_per_sample[0]),
        "eval_mfu": utilisation(profile.eval_per_token, profile.eval_per_sample, profile.eval_per_batch,
                                eval_rates, 1, sequences_per_sample[1]),
        "mfu_formula": (
            "linear-layer matmuls (" + ("rows and input-gradient needs read from the model by forward hooks"
                                        if profile.probed else "structural upper bound, the model was not probed")
            + "): per row 2N forward, +2N weight gradient when trained, +2N input gradient when the input "
            "depends on a trained parameter; rows = processed positions (real tokens, in evaluation of a "
            f"generation task the generated ones too, + {virtual_positions} virtual per sequence), or per sequence (pooled heads, "
            "prefix projection; a multiple-choice row is one sequence per choice: *_sequences_per_sample), or "
            f"per batch (P-tuning's prompt encoder); attention scores not counted; peak = {where}"),
    }
