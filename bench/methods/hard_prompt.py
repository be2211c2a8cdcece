"""Hard prompt: no training; the task's instruction plus k solved training rows go before every input."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from bench.errors import ConfigError
from bench.methods.base import Adapted, ApplyContext, Method

PROMPT_FILE = "prompt.txt"


def draw_demonstrations(train, k: int, seed: int) -> list[int]:
    """Row positions of k in-context examples drawn from train with the run's seed."""
    if k <= 0:
        return []
    if train is None or k > len(train):
        raise ConfigError(f"method.shots: {k} demonstrations need a train split of at least {k} rows"
                          f" (it has {0 if train is None else len(train)})")
    return random.Random(seed).sample(range(len(train)), k)


class HardPrompt(Method):
    kind = "hard_prompt"

    @property
    def trains(self) -> bool:
        return False

    def check(self, model_kind: str, shape: str) -> None:
        super().check(model_kind, shape)
        if model_kind != "decoder":
            raise ConfigError("method: hard_prompt needs a decoder model (e.g. model=smollm2-135m); "
                              f"a {model_kind} model has no text continuation to prompt")
        shots = self.cfg.get("shots", 0)
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise ConfigError(f"method.shots: must be an integer >= 0, got {shots!r}")

    def apply(self, model: torch.nn.Module, ctx: ApplyContext) -> Adapted:
        self.check(ctx.model_kind, "")
        for p in model.parameters():
            p.requires_grad_(False)
        if ctx.prompt_text is None:
            raise ValueError("hard_prompt: ApplyContext.prompt_text is needed to write the prompt")
        picked = draw_demonstrations(ctx.train_split, int(self.cfg.get("shots", 0)), ctx.seed)
        demos = [ctx.train_split[i] for i in picked]
        text = ctx.prompt_text(demos, bool(self.cfg.get("instruction", True)))
        return Adapted(model, self, prompt_prefix=text, extra={"demonstrations": picked})

    def save(self, adapted: Adapted, folder: Path) -> Path:
        path = folder / "prompt"
        path.mkdir(parents=True, exist_ok=True)
        (path / PROMPT_FILE).write_text(adapted.prompt_prefix, encoding="utf-8")
        return path

    def kept(self, keep: str) -> bool:
        return True  # the prompt text is the method: always kept, whatever trainer.keep_weights says

    def facts(self, adapted: Adapted) -> dict:
        return {"shots": int(self.cfg.get("shots", 0)), "instruction": bool(self.cfg.get("instruction", True)),
                "demonstration_rows": list(adapted.extra.get("demonstrations", [])),
                "prompt_chars": len(adapted.prompt_prefix)}
