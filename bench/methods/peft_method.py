"""Any PEFT method, from ``method.peft`` (a PEFT config with ``_target_``), with what each family needs.

- The PEFT task type is set here from the model kind (SEQ_CLS for encoders, CAUSAL_LM for decoders).
- Soft prompts (prompt tuning, P-tuning) add num_virtual_tokens positions to every sample through all
  layers; prefix tuning adds key/value vectors only; LoRA-like methods add none.
- Soft prompt initialisation: ``method.init`` (see soft_prompt_init).
- IA3: ``feedforward_modules`` are added to ``target_modules`` (PEFT needs them to be a subset).
- AdaLoRA: ``total_step`` is the run's optimizer steps; ``tinit`` / ``tfinal`` below 1 are fractions of it;
  ``update_and_allocate(step)`` is a step hook; facts() records the final rank pattern; its orthogonal
  regulariser is in the training loss of every shape (PEFT adds it only to a loss the model computes itself).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError
from bench.methods import soft_prompt_init
from bench.methods.base import Adapted, ApplyContext, Method, task_type_for

# positions of a prompt-learning method's virtual tokens that pass every layer (prefix tuning: key/values only)
PREFIX_TYPES = ("PREFIX_TUNING",)
# PEFT's prompt-learning types it refuses to build on a gradient-checkpointed model (PeftModel._setup_prompt_encoder,
# huggingface/peft#2191): their prefix reaches every layer as a key/value Cache, which checkpointing cannot carry
CACHE_PREFIX_TYPES = ("PREFIX_TUNING", "CARTRIDGE")
# a placeholder budget for checking an AdaLoRA config before the run's step count is known
_CHECK_TOTAL_STEPS = 10_000


def _peft_class(cfg: DictConfig):
    import peft
    from hydra.utils import get_class

    target = cfg.peft.get("_target_")
    if not target or not str(target).startswith("peft."):
        raise ConfigError(f"method.peft._target_: must name a PEFT config class, e.g. peft.LoraConfig; got {target!r}")
    try:
        cls = get_class(str(target))
    except Exception as err:  # noqa: BLE001 - hydra wraps import errors in several types
        raise ConfigError(f"method.peft._target_: cannot import {target!r} ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)):
        raise ConfigError(f"method.peft._target_: {target!r} is not a PEFT config class")
    return cls


def _fraction_or_steps(value, total: int, key: str) -> int:
    """AdaLoRA schedule points: an int is a step count; a float in [0, 1) a fraction of total steps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"method.peft.{key}: must be an integer >= 0 (steps) or a fraction in [0, 1), got {value!r}")
    if isinstance(value, float):
        if value >= 1:
            raise ConfigError(f"method.peft.{key}: a float is a fraction of the run's steps and must be < 1, "
                              f"got {value!r}")
        return int(value * total)
    return int(value)


class PeftMethod(Method):
    kind = "peft"
    servable = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.config_class = _peft_class(cfg)
        import peft

        self._peft = peft
        self.prompt_learning = issubclass(self.config_class, peft.PromptLearningConfig)
        self.peft_type = self._peft_type()

    def _peft_type(self) -> str:
        """PEFT's type name (LORA, PROMPT_TUNING, ...) without building the config (it may need run facts)."""
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        for name, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
            if cls is self.config_class:
                return str(getattr(name, "value", name))
        return self.config_class.__name__.removesuffix("Config").upper()

    # ------------------------------------------------------------------ properties the run asks about
    @property
    def adds_positions(self) -> bool:
        """Soft prompts (prompt tuning, P-tuning, ...) prepend virtual tokens that go through every layer."""
        return self.prompt_learning and self.peft_type not in PREFIX_TYPES

    @property
    def mixes_soft_prompts(self) -> bool:
        """Rows of different tasks can share a forward pass, each with its own prompt (serve's mixed batches)."""
        return self.peft_type == "PROMPT_TUNING"

    @property
    def is_adalora(self) -> bool:
        return issubclass(self.config_class, self._peft.AdaLoraConfig)

    # ------------------------------------------------------------------ config
    def peft_config(self, task_type: str, *, total_steps: int | None = None, num_virtual_tokens: int | None = None,
                    **_: Any):
        """The instantiated PEFT config. total_steps: the run's optimizer steps (AdaLoRA); num_virtual_tokens:
        fills a null method.peft.num_virtual_tokens (init.mode=text: as many as the init text has tokens)."""
        from hydra.utils import instantiate

        peft_cfg = self.cfg.peft
        overrides: dict[str, Any] = {"task_type": task_type}
        if "num_virtual_tokens" in peft_cfg and peft_cfg.num_virtual_tokens is None:
            if num_virtual_tokens is None:
                raise ConfigError("method.peft.num_virtual_tokens: null needs method.init.mode=text (as many as the "
                                  "init text has tokens)")
            overrides["num_virtual_tokens"] = num_virtual_tokens
        if self.is_adalora:
            overrides.update(self._adalora_schedule(total_steps))
        if issubclass(self.config_class, self._peft.IA3Config):
            overrides.update(self._ia3_targets())
        try:
            return instantiate(peft_cfg, _convert_="all", **overrides)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - PEFT's own checks (TypeError for unknown keys, ValueError ...)
            cause = err.__cause__ or err
            raise ConfigError(f"method.peft: {self.config_class.__name__} refuses this config: "
                              f"{type(cause).__name__}: {cause}") from None

    def _adalora_schedule(self, total_steps: int | None) -> dict:
        p = self.cfg.peft
        if total_steps is None:
            raise ConfigError("method.peft.total_step: AdaLoRA needs the run's optimizer steps "
                              "(ApplyContext.total_steps)")
        if p.get("total_step") is not None:
            raise ConfigError("method.peft.total_step: leave it null; bench fills it from the run's steps")
        total = int(total_steps)
        tinit = _fraction_or_steps(p.get("tinit", 0), total, "tinit")
        tfinal = _fraction_or_steps(p.get("tfinal", 0), total, "tfinal")
        fractions = isinstance(p.get("tinit", 0), float) or isinstance(p.get("tfinal", 0), float)
        if tinit >= total - tfinal:
            if not fractions:
                raise ConfigError(f"method.peft.tinit/tfinal: {tinit} + {tfinal} steps leave no budgeting phase in a "
                                  f"run of {total} steps; use fractions (e.g. tinit: 0.1, tfinal: 0.3)")
            tinit, tfinal = 0, 0  # a run too short for the fractions: budget over every step
        return {"total_step": total, "tinit": tinit, "tfinal": tfinal}

    def _ia3_targets(self) -> dict:
        p = self.cfg.peft
        ff = p.get("feedforward_modules")
        targets = p.get("target_modules")
        if ff is None or targets is None or isinstance(ff, str) or isinstance(targets, str):
            return {}
        ff, targets = list(ff), list(targets)
        return {"target_modules": targets + [m for m in ff if m not in targets], "feedforward_modules": ff}

    def check(self, model_kind: str, shape: str) -> None:
        init = self.cfg.get("init")
        soft_prompt_init.check(init, self.peft_type)
        if self.cfg.peft.get("num_virtual_tokens", 1) is None and (init is None or init.get("mode") != "text"):
            raise ConfigError("method.peft.num_virtual_tokens: null needs method.init.mode=text")
        # build the PEFT config now: a wrong nested key fails here, before any data or model loads
        self.peft_config(task_type_for(model_kind), total_steps=_CHECK_TOTAL_STEPS, num_virtual_tokens=1)

    def check_training(self, trainer_cfg: DictConfig) -> None:
        if trainer_cfg.get("gradient_checkpointing") and self.peft_type in CACHE_PREFIX_TYPES:
            raise ConfigError(f"trainer.gradient_checkpointing: PEFT refuses it for method={self.name} "
                              f"(\"{self.peft_type} does not work with gradient checkpointing\": the prefix enters "
                              "every layer as a key/value cache, and checkpointing does not work with a cache; "
                              "huggingface/peft#2191); set trainer.gradient_checkpointing=false or use another "
                              "method (e.g. lora, prompt)")

    # ------------------------------------------------------------------ on the model
    def apply(self, model: torch.nn.Module, ctx: ApplyContext) -> Adapted:
        peft = self._peft
        init = self.cfg.get("init")
        n_text = None
        if self.cfg.peft.get("num_virtual_tokens", 1) is None and init is not None:
            text = soft_prompt_init.init_text(init, ctx.task_spec, ctx.prompt_text)
            n_text = len(soft_prompt_init.token_ids(ctx.tokenizer, text))
        peft_cfg = self.peft_config(ctx.task_type, total_steps=ctx.total_steps, num_virtual_tokens=n_text)
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            # QLoRA: the quantised base frozen, its unquantised norms and head in fp32 (gradient checkpointing is
            # trainer.gradient_checkpointing's, set before this)
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # fp16 / bf16 bases: PEFT's autocast_adapter_dtype (on by default) keeps the LoRA-like adapters fp32
        peft_model = peft.get_peft_model(model, peft_cfg)
        virtual = int(getattr(peft_cfg, "num_virtual_tokens", 0) or 0) if self.prompt_learning else 0
        if init is not None and self.peft_type in soft_prompt_init.MODES_BY_PEFT_TYPE:
            soft_prompt_init.check(init, self.peft_type)
            ids = soft_prompt_init.init_ids(init, ctx.tokenizer, virtual, ctx.seed, task_spec=ctx.task_spec,
                                            prompt_text=ctx.prompt_text, label_words=list(ctx.label_words))
            soft_prompt_init.initialise(peft_model, ids, ctx.seed)
        hooks = [AdaLoraAllocation(peft_model)] if self.is_adalora else []
        wrappers = [AdaLoraOrthogonality(peft_model)] if self.is_adalora else []
        return Adapted(peft_model, self, virtual_tokens=virtual,
                       virtual_positions=virtual if self.adds_positions else 0, step_hooks=hooks,
                       loss_wrappers=wrappers)

    def save(self, adapted: Adapted, folder: Path) -> Path:
        path = folder / "adapter"
        adapted.model.save_pretrained(path, safe_serialization=True)
        return path

    def kept(self, keep: str) -> bool:
        return keep in ("all", "adapters")

    def facts(self, adapted: Adapted) -> dict:
        cfg = adapted.model.peft_config["default"]
        facts: dict[str, Any] = {"peft_type": self.peft_type}
        if self.prompt_learning:
            facts["num_virtual_tokens"] = adapted.virtual_tokens
            facts["virtual_positions"] = adapted.virtual_positions
            if self.cfg.get("init") is not None:
                facts["init"] = self.cfg.init.mode
        else:
            targeted = getattr(cfg, "target_modules", None)
            facts["target_modules"] = sorted(targeted) if isinstance(targeted, (set, list, tuple)) else targeted
            facts["adapted_layers"] = len(_adapted_layer_names(adapted.model))
        if self.is_adalora:
            facts.update(adalora_facts(adapted.model))
        if self.peft_type in ("VERA", "RANDLORA"):
            facts["shared_projections_stored"] = bool(getattr(cfg, "save_projection", True))
        return facts


def _adapted_layer_names(model) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


# ---------------------------------------------------------------------------- AdaLoRA

def _module_of(param_name: str) -> str:
    """'...attention.self.query.lora_E.default' or '...query.lora_E' -> '...attention.self.query'."""
    head, _, _ = param_name.partition(".lora_E")
    return head


def _rank_pattern_from_weights(peft_model) -> dict:
    """The pattern a resumed run's masked lora_E rows imply (the allocator's scores are not checkpointed)."""
    return {name: (p.detach().view(-1) != 0).tolist() for name, p in peft_model.base_model.model.named_parameters()
            if ".lora_E." in name}


class AdaLoraAllocation:
    """Step hook: AdaLoRA's importance update and rank budget allocation after each optimizer step."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, step: int) -> None:
        tuner = self.peft_model.base_model
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if step > config.total_step - config.tfinal and config.rank_pattern is None:
            config.rank_pattern = _rank_pattern_from_weights(self.peft_model)  # resumed past the final allocation
        tuner.update_and_allocate(step)


def orthogonal_regulariser(peft_model) -> torch.Tensor:
    """AdaLoRA's orthogonality penalty R on its trained adapter: the mean, over every module's A (rank x in) and
    B (out x rank), of ||A A^T - I||_F and ||B^T B - I||_F (the singular-vector matrices kept near orthonormal)."""
    tuner = peft_model.base_model
    adapter = tuner.trainable_adapter_name
    norms = []
    for name, p in tuner.model.named_parameters():
        if name.endswith(f".lora_A.{adapter}"):
            gram = p @ p.T
        elif name.endswith(f".lora_B.{adapter}"):
            gram = p.T @ p
        else:
            continue
        norms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)))
    return torch.stack(norms).mean() if norms else torch.zeros(())


class AdaLoraOrthogonality:
    """Loss wrapper: AdaLoRA's orthogonal regulariser (orth_reg_weight x R) in the training loss of every shape.

    PEFT adds it inside AdaLoraModel.forward, but only to a loss the model computes itself (given labels); a shape
    whose loss is computed outside the model (encoder multiple choice: the choices' scores meet in a softmax)
    would train without it. A forward hook on the AdaLoRA tuner records whether a forward of this step returned
    a loss (then PEFT added the term); when none did, the wrapper adds it. So it is counted exactly once."""

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.added = False
        peft_model.base_model.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        if isinstance(getattr(output, "loss", None), torch.Tensor):
            self.added = True

    def __call__(self, loss_fn):
        def with_regulariser(model, batch):
            self.added = False
            loss = loss_fn(model, batch)
            tuner = self.peft_model.base_model
            weight = tuner.peft_config[tuner.trainable_adapter_name].orth_reg_weight
            if not self.added and weight > 0:
                loss = loss + weight * orthogonal_regulariser(self.peft_model).to(loss.dtype)
            return loss
        return with_regulariser


def adalora_facts(peft_model) -> dict:
    config = peft_model.peft_config["default"]
    pattern = config.rank_pattern
    names = sorted(_module_of(n) for n, _ in peft_model.base_model.model.named_parameters() if ".lora_E." in n)
    if pattern:
        ranks = {_module_of(k): int(sum(bool(x) for x in v)) for k, v in pattern.items()}
        rank_pattern = {_module_of(k): [int(bool(x)) for x in v] for k, v in sorted(pattern.items())}
    else:  # never allocated (no step hook ran): every module kept init_r
        ranks = {n: int(config.init_r) for n in names}
        rank_pattern = None
    return {
        "allocated": pattern is not None and bool(pattern),
        "init_r": int(config.init_r), "target_r": int(config.target_r),
        "budget": int(config.target_r) * len(names), "total_rank": int(sum(ranks.values())),
        "total_step": config.total_step, "tinit": config.tinit, "tfinal": config.tfinal, "deltaT": config.deltaT,
        "ranks": dict(sorted(ranks.items())), "rank_pattern": rank_pattern,
    }
