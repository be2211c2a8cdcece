"""What a soft prompt's virtual tokens are close to: for each virtual vector, the vocabulary tokens of the frozen
input embedding table with the highest cosine similarity (the reading Lester et al. 2021 give trained prompts).

The virtual vectors are those the model prepends, from PEFT's own `get_prompt_embedding_to_save`: the prompt
table itself for prompt tuning (PromptTuningConfig), the prompt encoder's output for P-tuning
(PromptEncoderConfig). Prefix tuning's vectors are per-layer keys and values, not input embeddings: none.
Special tokens are left out of the vocabulary (as in soft_prompt_init's vocab sampling). Result: result.json
`soft_prompt` (bench.result_schema.SoftPrompt).
"""
from __future__ import annotations

import torch

SOFT_PROMPT_TYPES = {"PROMPT_TUNING": "prompt", "P_TUNING": "prompt_encoder"}
TOP_K = 5


@torch.no_grad()
def nearest_tokens(peft_model, tokenizer, k: int = TOP_K, adapter: str = "default") -> dict | None:
    """{"source", "similarity", "k", "vocabulary", "nearest_tokens", "nearest_ids"} for a soft prompt adapter, None
    for any other model. nearest_tokens: per virtual token, its k nearest [token text, cosine] pairs, best first."""
    config = getattr(peft_model, "peft_config", {}).get(adapter)
    peft_type = str(getattr(getattr(config, "peft_type", None), "value", ""))
    if peft_type not in SOFT_PROMPT_TYPES:
        return None
    virtual = peft_model.get_prompt_embedding_to_save(adapter).float()
    table = peft_model.get_input_embeddings().weight.detach().float().to(virtual.device)
    table = table[:min(len(tokenizer), table.shape[0])]  # rows past the tokenizer's ids name no token
    cosine = torch.nn.functional.normalize(virtual, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    special = [i for i in tokenizer.all_special_ids if i < table.shape[0]]
    cosine[:, special] = -float("inf")
    values, ids = cosine.topk(min(k, table.shape[0] - len(special)), dim=-1)
    words = [[tokenizer.decode([i]) for i in row] for row in ids.tolist()]
    return {
        "source": SOFT_PROMPT_TYPES[peft_type], "similarity": "cosine", "k": values.shape[1],
        "vocabulary": table.shape[0] - len(special),
        "nearest_tokens": [[[w, round(float(c), 6)] for w, c in zip(ws, cs)] for ws, cs in zip(words, values.tolist())],
        "nearest_ids": ids.tolist(),
    }
