"""model.dtype, model.attn_implementation, model.quantization: every impossible setting is a ConfigError before
anything loads, bitsandbytes gets the settings QLoRA uses (checked without bitsandbytes), a 4-bit weight counts as
its parameters, a bf16 base loads, trains and is stored at half the bytes, and result.json records all three."""
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from bench import checks, config, models
from bench.errors import ConfigError
from bench.measure import storage
from bench.report.read import model_of, variant_overrides


def _typed(compose, *overrides):
    return checks.validate(compose("model=tiny-llama", *overrides))


def _refused(compose, *overrides) -> str:
    with pytest.raises(ConfigError) as err:
        _typed(compose, *overrides)
    return str(err.value)


@pytest.fixture
def installed(monkeypatch):
    """Pretend the named packages are installed (find_spec finds them); everything else as it is."""
    real = importlib.util.find_spec
    names = set()

    def find_spec(name, *args, **kwargs):
        return SimpleNamespace(name=name) if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return names.add


# ------------------------------------------------------------------------------------ refusals

def test_the_defaults_are_fp32_sdpa_unquantised_and_bad_values_name_the_key(compose):
    typed = _typed(compose)
    assert (typed.model.dtype, typed.model.attn_implementation, typed.model.quantization) == ("fp32", "sdpa", None)
    assert _refused(compose, "model.dtype=fp64") == "model.dtype: must be fp32, bf16 or fp16, got 'fp64'"
    assert _refused(compose, "model.quantization=int4") == "model.quantization: must be null, nf4 or int8, got 'int4'"
    assert _refused(compose, "model.attn_implementation=flex") == \
        "model.attn_implementation: must be sdpa, eager or flash_attention_2, got 'flex'"


def test_flash_attention_2_without_flash_attn_is_refused_saying_how_to_install_it(compose):
    assert importlib.util.find_spec("flash_attn") is None  # not installed here
    message = _refused(compose, "model.attn_implementation=flash_attention_2", "model.dtype=bf16")
    assert message.startswith("model.attn_implementation: flash_attention_2 needs the flash_attn package")
    assert "pip install flash-attn" in message and "model.attn_implementation=sdpa" in message


def test_flash_attention_2_needs_half_precision_and_a_cuda_device(compose, installed, monkeypatch):
    installed("flash_attn")
    flash = "model.attn_implementation=flash_attention_2"
    assert "runs in half precision only" in _refused(compose, flash, "trainer.mixed_precision=no")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _typed(compose, flash).model.dtype == "fp32"  # fp32 weights under bf16 autocast (mixed_precision=auto)
    assert "trainer.device=cpu" in _refused(compose, flash, "model.dtype=bf16", "trainer.device=cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA device and none is visible" in _refused(compose, flash, "model.dtype=bf16")


def test_quantization_is_refused_without_a_cuda_device(compose, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for q in ("nf4", "int8"):
        message = _refused(compose, f"model.quantization={q}")
        assert message.startswith(f"model.quantization: {q} (bitsandbytes) runs on a CUDA device and none is visible")
    # trainer.device=cpu: refused by the config's own check (no torch needed)
    with pytest.raises(ConfigError, match=r"^model\.quantization: nf4 \(bitsandbytes\) needs a CUDA device, and "
                                          r"trainer\.device=cpu"):
        config.check(compose("model=tiny-llama", "model.quantization=nf4", "trainer.device=cpu"))


def test_quantization_with_full_fine_tuning_is_refused(compose, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    message = _refused(compose, "model.quantization=nf4", "method=full")
    assert message.startswith("model.quantization: a quantised base cannot be fully fine-tuned")
    assert "method=lora" in message


def test_quantization_without_bitsandbytes_says_pip_install_bitsandbytes(compose, monkeypatch, installed):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "pip install bitsandbytes" in _refused(compose, "model.quantization=nf4")
    installed("bitsandbytes")
    for encoder_or_decoder in ("model=tiny-llama", "model=tiny-bert"):  # bitsandbytes quantises any nn.Linear
        typed = checks.validate(compose(encoder_or_decoder, "model.quantization=nf4", "method=lora"))
        assert typed.model.quantization == "nf4"


def test_fp16_weights_are_refused_for_full_fine_tuning_and_allowed_for_peft(compose):
    # measured: tiny-llama full fine-tuning with fp16 weights on the CPU diverged (NaN) at step 2; LoRA finished
    message = _refused(compose, "model.dtype=fp16", "method=full")
    assert message.startswith("model.dtype: full fine-tuning trains the fp16 weights themselves")
    assert "model.dtype=bf16" in message
    assert _typed(compose, "model.dtype=fp16", "method=lora").model.dtype == "fp16"
    assert _typed(compose, "model.dtype=bf16", "method=full").model.dtype == "bf16"


# -------------------------------------------------------------------- what transformers is given

def test_bitsandbytes_settings_are_qlora_nf4_and_llm_int8():
    assert models.bnb_kwargs("nf4") == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                        "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": torch.bfloat16}
    assert models.bnb_kwargs("int8") == {"load_in_8bit": True}


def test_load_kwargs_carry_dtype_attention_and_the_quantization_config(compose, monkeypatch):
    from transformers import BitsAndBytesConfig

    assert models.load_kwargs(_typed(compose).model) == {"dtype": torch.float32, "attn_implementation": "sdpa"}
    # the real BitsAndBytesConfig, without its check that bitsandbytes is installed (it is not, here)
    monkeypatch.setattr(BitsAndBytesConfig, "post_init", lambda self: None)
    model_cfg = compose("model=tiny-llama", "model.quantization=nf4", "model.dtype=bf16",
                        "model.attn_implementation=eager").model
    kwargs = models.load_kwargs(model_cfg)
    bnb = kwargs.pop("quantization_config")
    assert kwargs == {"dtype": torch.bfloat16, "attn_implementation": "eager", "device_map": {"": 0}}
    assert isinstance(bnb, BitsAndBytesConfig) and bnb.load_in_4bit and not bnb.load_in_8bit
    assert (bnb.bnb_4bit_quant_type, bnb.bnb_4bit_use_double_quant, bnb.bnb_4bit_compute_dtype) == \
        ("nf4", True, torch.bfloat16)
    assert bnb.llm_int8_skip_modules is None  # transformers' own choice of the unquantised head
    model_cfg.quantization = "int8"
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: the process's own GPU
    kwargs = models.load_kwargs(model_cfg)
    assert kwargs["quantization_config"].load_in_8bit and not kwargs["quantization_config"].load_in_4bit
    assert kwargs["device_map"] == {"": 1}


# -------------------------------------------------------------------------- parameter counts

class FakeParams4bit(torch.nn.Parameter):
    """What bitsandbytes' Params4bit looks like to a counter: uint8 storage, two 4-bit values per byte, and a
    quant_state with the weight's real shape."""


def test_a_packed_4bit_weight_counts_its_parameters_not_its_bytes():
    layer = torch.nn.Linear(32, 64)  # 2048 weights + 64 biases
    packed = FakeParams4bit(torch.zeros(1024, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = SimpleNamespace(shape=torch.Size([64, 32]), quant_type="nf4")
    layer.weight = packed
    layer.bias.requires_grad_(True)
    assert packed.numel() == 1024
    assert storage.param_count(packed) == 2048
    assert storage.count_params(layer) == (2048 + 64, 64)
    assert storage.params_by_format(layer) == {"float32": 64, "nf4": 2048}


# --------------------------------------------------------------------------- loading for real

def _load(typed, **model_overrides):
    model_cfg = typed.model.copy()
    for k, v in model_overrides.items():
        model_cfg[k] = v
    tokenizer = models.load_tokenizer(model_cfg, typed.paths.cache_dir)
    torch.manual_seed(0)
    return models.load_model(model_cfg, typed.task, tokenizer, typed.paths.cache_dir), tokenizer


def test_eager_and_sdpa_give_the_same_logits_on_tiny_llama(compose):
    typed = _typed(compose, "method=full")
    eager, tokenizer = _load(typed, attn_implementation="eager")
    sdpa, _ = _load(typed, attn_implementation="sdpa")
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    batch = tokenizer(["The film was great.", "Bad."], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # one padded row
    with torch.no_grad():
        a, b = eager(**batch).logits, sdpa(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real], rtol=1e-4, atol=1e-4)


def test_lora_on_a_bf16_base_keeps_fp32_adapters_and_trains(compose):
    from bench.methods import ApplyContext, get

    typed = _typed(compose, "model.dtype=bf16", "method=lora")
    model, tokenizer = _load(typed)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    adapted = get(typed.method).apply(model, ApplyContext(model_kind="decoder", task_type="CAUSAL_LM"))
    trainable = {n: p for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}  # PEFT's autocast_adapter_dtype
    formats = storage.params_by_format(adapted.model)
    assert formats["float32"] == sum(p.numel() for p in trainable.values())
    batch = tokenizer(["The film was great."], return_tensors="pt")
    loss = adapted.model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                        for p in trainable.values())


def test_full_fine_tuning_in_bf16_stores_half_the_bytes_and_records_the_options(compose, tmp_path):
    from bench.run import execute

    fp32, _ = _load(_typed(compose, "method=full"))
    fp32.save_pretrained(tmp_path / "fp32", safe_serialization=True)  # what an fp32 full fine-tuning run stores
    fp32_bytes = storage.storage(tmp_path / "fp32")["bytes"]
    cfg = compose("model=tiny-llama", "method=full", "model.dtype=bf16", "trainer.keep_weights=all",
                  "trainer.train_samples=16", "trainer.eval_samples=8", "trainer.max_length=72")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    total = result["params"]["total"]
    assert total == storage.count_params(fp32)[0]
    # the loaded (and trained) model's parameters are all bf16, and so is every stored value
    assert result["base_model"] == {"dtype": "bf16", "attn_implementation": "sdpa",
                                    "attn_implementation_loaded": "sdpa", "quantization": None,
                                    "params_by_format": {"bfloat16": total}}
    assert result["memory"]["base_weights"] == "bf16"
    assert result["conditions"]["precision"] == "bf16"  # no autocast on the CPU: the matmuls run in bf16 weights' dtype
    assert result["storage"]["dtypes"] == {"BF16": total} and result["params"]["stored"] == total
    assert storage.storage(tmp_path / "fp32")["dtypes"] == {"F32": total}
    # the weights: 2 bytes per parameter where fp32 takes 4; with config.json, about half the bytes
    weights = config.run_dir(cfg) / "model" / "model.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    assert weights.stat().st_size - header == 2 * total
    assert math.isclose(result["storage"]["bytes"] / fp32_bytes, 0.5, rel_tol=0.01)
    assert math.isclose(fp32_bytes / (4 * total), 1.0, rel_tol=0.01)


def test_the_report_labels_a_model_by_its_weights_only_where_they_are_not_the_default():
    def data(**model):
        return {"model": "smollm2-135m", "config": {"model": {"dtype": "fp32", "quantization": None, **model}}}

    assert model_of(data()) == "smollm2-135m"
    assert model_of({"model": "minilm", "config": {"model": {}}}) == "minilm"  # older results: no such keys
    assert model_of(data(dtype="bf16")) == "smollm2-135m bf16"
    assert model_of(data(quantization="nf4")) == "smollm2-135m nf4"
    # the override is in the model label, not repeated in the variant
    assert variant_overrides(["model.dtype=bf16", "+model.quantization=nf4", "method.lr=0.1"]) == ["method.lr=0.1"]
