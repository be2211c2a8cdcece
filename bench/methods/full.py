"""Full fine-tuning: every weight trained, the whole model stored."""
from __future__ import annotations

import torch

from bench.methods.base import Adapted, ApplyContext, Method


class FullFineTuning(Method):
    kind = "full"

    def apply(self, model: torch.nn.Module, ctx: ApplyContext) -> Adapted:
        for p in model.parameters():
            p.requires_grad_(True)
        return Adapted(model, self)

    def facts(self, adapted: Adapted) -> dict:
        return {"trained": "all weights"}
