"""Every shipped method file on the tiny encoder and the tiny decoder: it trains, it is counted and stored as
its formula says, it adds the positions it should, and the method objects refuse what they cannot do."""
import json
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from bench import methods, models
from bench.config import CONF_DIR
from bench.errors import ConfigError

METHOD_FILES = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
TRAINED = [m for m in METHOD_FILES if m != "hard_prompt"]
STEPS = 40
# settings a 32-wide random model needs (the shipped values are for real models)
TINY = {"fourierft": ["method.peft.n_frequency=200"]}     # at most in x out = 16 x 32 of tiny-llama's v_proj
# tiny-llama's default init (std 0.02) leaves a frozen random base almost blind to what IA3, soft prompts or OFT
# change; at tiny-bert's scale (its file sets 0.2) every method can fit the batch
MODEL_OVERRIDES = {"tiny-bert": [], "tiny-llama": ["+model.config.initializer_range=0.2"]}
SOFT_PROMPTS = {"prompt", "ptuning"}                     # virtual tokens that pass every layer

# a fixed batch: sentences with a binary label; the decoder learns one continuation word per row
ROWS = [("a gorgeous , witty , seductive movie", 1), ("the film is strictly routine", 0),
        ("an utterly charming and hilarious film", 1), ("rooting for the villain is a bad sign", 0),
        ("a masterpiece four years in the making", 1), ("dull , lifeless and amateurish", 0),
        ("one of the best films of the year", 1), ("a sour , nasty offering", 0)]
WORDS = (" bad", " good")


def test_the_matrix_covers_every_shipped_method():
    assert {"full", "lora", "prefix", "prompt", "ia3", "dora", "adalora", "vera", "loha", "ptuning"} <= set(TRAINED)


_TOKENIZERS = {}


def _tokenizer(cfg):
    """One tokenizer per model for the whole module (loading one takes a second)."""
    if cfg.model.name not in _TOKENIZERS:
        _TOKENIZERS[cfg.model.name] = models.load_tokenizer(cfg.model, cfg.paths.cache_dir)
    return _TOKENIZERS[cfg.model.name]


def _batch(tokenizer, kind: str) -> dict:
    texts, labels = [t for t, _ in ROWS], torch.tensor([y for _, y in ROWS])
    if kind == "encoder":
        return {**tokenizer(texts, padding=True, return_tensors="pt"), "labels": labels}
    # decoders: left-padded, so that every row's next-token logits are at the last position
    seqs = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
    return {"input_ids": ids, "attention_mask": mask, "target": labels}


def _loss_fn(tokenizer, kind: str):
    """Encoders: the model's classification loss. Decoders: cross-entropy over the two label words' next-token
    logits, as decoder classification scores its verbalizer (only the last position's logits are computed)."""
    if kind == "encoder":
        return lambda model, batch: model(**batch).loss
    words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in WORDS]
    assert all(len(w) == 1 for w in words)
    index = torch.tensor([w[0] for w in words])

    def loss(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1).logits
        return torch.nn.functional.cross_entropy(logits[:, -1, index], batch["target"])
    return loss


def _context(cfg, tokenizer, total_steps=STEPS, train=None, prompt_text=None) -> methods.ApplyContext:
    kind = cfg.model.kind
    return methods.ApplyContext(model_kind=kind, task_type="CAUSAL_LM" if kind == "decoder" else "SEQ_CLS",
                                task_spec=cfg.task, tokenizer=tokenizer, train_split=train, seed=0,
                                total_steps=total_steps, prompt_text=prompt_text, label_words=list(WORDS))


def _adapt(cfg, **ctx):
    tokenizer = _tokenizer(cfg)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    method = methods.get(cfg.method)
    method.check(cfg.model.kind, "classification")
    return method.apply(model, _context(cfg, tokenizer, **ctx)), tokenizer


def _train(adapted, batch, lr: float, loss_fn, steps: int = STEPS) -> list[float]:
    model = adapted.model
    model.eval()  # dropout off: the loss on a fixed batch then reflects the optimiser alone
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        for hook in adapted.step_hooks:
            hook(step)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _trainable(model) -> int:
    seen = {}
    for p in model.parameters():
        if p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def _stored(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


# ---------------------------------------------------------------------------- analytic counts

def _dims(cfg):
    """(in, out) of each targeted attention projection in one layer, and the layer count."""
    m = cfg.model.config
    h, layers = m.hidden_size, m.num_hidden_layers
    kv = h // m.num_attention_heads * m.get("num_key_value_heads", m.num_attention_heads)
    out = {"query": h, "value": h, "q_proj": h, "v_proj": kv}
    return [(h, out[name]) for name in cfg.model.attention_modules], layers


def expected_counts(method: str, cfg, facts: dict) -> tuple[int, int] | None:
    """(trainable, stored) by the method's formula; None where PEFT picks shapes itself (LoKr's factors)."""
    m, p = cfg.model.config, cfg.method.get("peft")
    h, layers = m.hidden_size, m.num_hidden_layers
    encoder = cfg.model.kind == "encoder"
    head = h * 2 + 2 if encoder else 0  # the classifier (2 labels) is trained and stored with every adapter
    dims, _ = _dims(cfg)
    kv = dims[-1][1]  # the value projection's width: key/value vectors of prefix tuning

    def per_layer(f):
        return layers * sum(f(i, o) for i, o in dims)

    if method == "lora":
        n = per_layer(lambda i, o: p.r * (i + o))
    elif method == "dora":  # + one magnitude per output feature
        n = per_layer(lambda i, o: p.r * (i + o) + o)
    elif method == "loha":  # two (out x r)(r x in) pairs
        n = per_layer(lambda i, o: 2 * p.r * (i + o))
    elif method == "hra":  # r Householder vectors of the input size
        n = per_layer(lambda i, o: p.r * i)
    elif method == "oft":  # per block of b inputs: b(b-1)/2 skew-symmetric values
        b = p.oft_block_size
        n = per_layer(lambda i, o: i // b * b * (b - 1) // 2)
    elif method == "fourierft":
        n = per_layer(lambda i, o: p.n_frequency)
    elif method == "ia3":  # attention outputs scaled, feed-forward inputs scaled
        ff_in = (h + m.intermediate_size) if encoder else m.intermediate_size  # BERT: attention.output.dense too
        n = per_layer(lambda i, o: o) + layers * ff_in
    elif method == "vera":  # trained: a scale per output and per rank; stored also the shared A (r x in), B (out x r)
        n = per_layer(lambda i, o: o + p.r)
        shared = p.r * max(i for i, _ in dims) + max(o for _, o in dims) * p.r
        return n + head, n + head + shared
    elif method == "adalora":  # A (r x in), B (out x r), E (r): init_r while training, the allocated ranks stored
        n = per_layer(lambda i, o: p.init_r * (i + o + 1))
        width = {name: i + o + 1 for name, (i, o) in zip(cfg.model.attention_modules, dims)}
        stored = sum(r * width[name.rsplit(".", 1)[-1]] for name, r in facts["ranks"].items())
        return n + head, stored + head
    elif method == "ln_tuning":  # BERT LayerNorm: weight + bias (embeddings + 2 per layer); Llama RMSNorm: weight
        n = (1 + 2 * layers) * 2 * h if encoder else (2 * layers + 1) * h
    elif method == "prompt":
        n = p.num_virtual_tokens * h
    elif method == "prefix":  # a key and a value vector per virtual token and layer
        n = p.num_virtual_tokens * layers * 2 * kv
    elif method == "ptuning":  # table + MLP (h -> H -> H -> h) trained; only the n x h prompt it emits is stored
        big = p.encoder_hidden_size
        mlp = h * big + big + big * big + big + big * h + h
        return p.num_virtual_tokens * h + mlp + head, p.num_virtual_tokens * h + head
    elif method == "full":
        return None
    else:
        return None
    return n + head, n + head


# ---------------------------------------------------------------------------- the matrix

@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("method", TRAINED)
def test_method_matrix(compose, tmp_path, model, method):
    cfg = compose(f"model={model}", f"method={method}", *MODEL_OVERRIDES[model], *TINY.get(method, []))
    adapted, tokenizer = _adapt(cfg)
    kind = cfg.model.kind
    assert adapted.method.name == method and adapted.model is not None

    # positions every sample gains through all layers: soft prompts only
    n_virtual = cfg.method.peft.num_virtual_tokens if method in SOFT_PROMPTS | {"prefix"} else 0
    assert adapted.virtual_tokens == n_virtual
    assert adapted.virtual_positions == (n_virtual if method in SOFT_PROMPTS else 0)
    assert len(adapted.step_hooks) == (1 if method == "adalora" else 0)

    trainable = _trainable(adapted.model)
    lr = max(float(cfg.method.lr), 3e-2 if method in SOFT_PROMPTS else 1e-2)
    losses = _train(adapted, _batch(tokenizer, kind), lr, _loss_fn(tokenizer, kind))
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses

    path = adapted.save(tmp_path / "run")
    assert path.parent == tmp_path / "run" and path.name == ("model" if method == "full" else "adapter")
    stored = _stored(path)
    facts = adapted.facts()
    json.dumps(facts)  # goes into result.json
    total = sum(p.numel() for p in {id(p): p for p in adapted.model.parameters()}.values())
    if method == "full":
        assert trainable == total and stored == total
        assert adapted.kept_by_default("all") and not adapted.kept_by_default("adapters")
        return
    assert trainable < total / 10
    assert adapted.kept_by_default("adapters") and not adapted.kept_by_default("none")
    want = expected_counts(method, cfg, facts)
    if want is not None:
        assert (trainable, stored) == want
    else:  # no closed form here (LoKr's factor shapes), but everything trained is what is kept
        assert stored == trainable
    if method == "ptuning":
        assert stored < trainable
    if method == "vera":
        assert stored > trainable  # the shared random projections are kept with the adapter
    if method == "adalora":
        assert facts["allocated"] and min(facts["ranks"].values()) < cfg.method.peft.init_r


# ---------------------------------------------------------------------------- AdaLoRA

def test_adalora_moves_its_rank_budget_and_records_the_pattern(compose, tmp_path):
    cfg = compose("method=adalora", "method.peft.tinit=5", "method.peft.tfinal=10", "method.peft.deltaT=5")
    adapted, tokenizer = _adapt(cfg, total_steps=STEPS)
    peft_cfg = adapted.model.peft_config["default"]
    assert (peft_cfg.total_step, peft_cfg.tinit, peft_cfg.tfinal) == (STEPS, 5, 10)
    before = adapted.facts()
    assert not before["allocated"] and set(before["ranks"].values()) == {12}

    _train(adapted, _batch(tokenizer, "encoder"), 1e-2, _loss_fn(tokenizer, "encoder"))
    facts = adapted.facts()
    modules = 2 * len(cfg.model.attention_modules)  # 2 layers
    assert facts["allocated"] and facts["budget"] == 8 * modules == facts["total_rank"]
    ranks = facts["ranks"]
    assert len(ranks) == modules and min(ranks.values()) < 12 and sum(ranks.values()) == 32
    assert all(len(v) == 12 and sum(v) == ranks[k] for k, v in facts["rank_pattern"].items())
    # the pruned singular values are zero in the model (names as in the wrapped transformers model)
    for name, param in adapted.model.base_model.model.named_parameters():
        if ".lora_E." in name:
            kept = torch.tensor(facts["rank_pattern"][name.partition(".lora_E")[0]], dtype=torch.bool)
            assert torch.all(param.detach().view(-1)[~kept] == 0)

    path = adapted.save(tmp_path)
    saved = json.loads((path / "adapter_config.json").read_text())
    assert saved["rank_pattern"] and saved["total_step"] == STEPS
    h = cfg.model.config.hidden_size
    assert _stored(path) == 32 * (h + h + 1) + (2 * h + 2)  # only the kept ranks, plus the classifier


def test_adalora_schedule_fractions_and_refusals(compose):
    method = methods.get(compose("method=adalora").method)
    built = method.peft_config("SEQ_CLS", total_steps=200)
    assert (built.total_step, built.tinit, built.tfinal) == (200, 20, 60)  # tinit 0.1, tfinal 0.3
    short = method.peft_config("SEQ_CLS", total_steps=1)  # smoke runs: budgeting over every step
    assert (short.total_step, short.tinit, short.tfinal) == (1, 0, 0)
    with pytest.raises(ConfigError, match="total_step"):
        method.peft_config("SEQ_CLS")
    with pytest.raises(ConfigError, match=r"method\.peft\.total_step"):
        methods.get(compose("method=adalora", "method.peft.total_step=100").method).check("encoder", "classification")
    with pytest.raises(ConfigError, match="tinit/tfinal"):
        methods.get(compose("method=adalora", "method.peft.tinit=50", "method.peft.tfinal=60").method) \
            .peft_config("SEQ_CLS", total_steps=100)


# ---------------------------------------------------------------------------- checks before anything loads

def _method(**cfg):
    return methods.get(OmegaConf.create(cfg))


def test_registry_picks_the_kind():
    assert methods.get(OmegaConf.create({"name": "full", "lr": 1e-5, "peft": None})).kind == "full"
    assert _method(name="x", lr=1e-3, peft={"_target_": "peft.LoraConfig", "r": 2}).kind == "peft"
    assert _method(name="hard_prompt", shots=2, instruction=True).kind == "hard_prompt"


def test_hard_prompt_is_refused_on_encoders_before_anything_loads():
    method = _method(name="hard_prompt", shots=0, instruction=True)
    with pytest.raises(ConfigError, match="decoder"):
        method.check("encoder", "classification")
    method.check("decoder", "classification")


def test_wrong_peft_settings_fail_in_check_naming_the_key():
    with pytest.raises(ConfigError, match=r"method\.peft: LoraConfig"):
        _method(name="x", lr=1e-3, peft={"_target_": "peft.LoraConfig", "rr": 4}).check("encoder", "classification")
    with pytest.raises(ConfigError, match=r"method\.peft\._target_"):
        _method(name="x", lr=1e-3, peft={"_target_": "peft.NoSuchConfig"})
    with pytest.raises(ConfigError, match=r"method\.init"):
        _method(name="x", lr=1e-3, peft={"_target_": "peft.LoraConfig"}, init={"mode": "vocab"}) \
            .check("encoder", "classification")


@pytest.mark.parametrize("mode", ["text", "labels"])
def test_ptuning_refuses_word_inits_it_cannot_honour(compose, mode):
    method = methods.get(compose("method=ptuning", f"method.init={{mode: {mode}}}").method)
    with pytest.raises(ConfigError, match="P-tuning"):
        method.check("encoder", "classification")


def test_ptuning_vocab_init_sets_the_table_its_encoder_reads(compose):
    cfg = compose("model=tiny-llama", "method=ptuning", "method.init={mode: vocab}")
    adapted, _ = _adapt(cfg)
    table = adapted.model.prompt_encoder["default"].embedding.weight.detach()
    words = adapted.model.get_input_embeddings().weight.detach()
    assert table.shape == (20, 32)
    assert all(any(torch.equal(row, w) for w in words) for row in table[:3])


def test_hard_prompt_draws_demonstrations_with_the_seed_and_keeps_the_text(compose, tmp_path):
    cfg = compose("model=tiny-llama", "method=hard_prompt", "method.shots=2")
    train = [{"sentence": f"row {i}", "label": i % 2} for i in range(10)]

    def prompt_text(demos, with_instruction):
        return ("Say it.\n\n" if with_instruction else "") + "".join(f"{d['sentence']}{WORDS[d['label']]}\n\n"
                                                                      for d in demos)

    adapted, _ = _adapt(cfg, train=train, prompt_text=prompt_text)
    picked = random.Random(0).sample(range(10), 2)  # the draw bench has always made (seed 0)
    assert adapted.facts()["demonstration_rows"] == picked
    assert adapted.prompt_prefix == prompt_text([train[i] for i in picked], True)
    assert _trainable(adapted.model) == 0 and adapted.virtual_positions == 0 and adapted.step_hooks == []
    path = adapted.save(tmp_path)
    assert (path / "prompt.txt").read_text(encoding="utf-8") == adapted.prompt_prefix
    assert adapted.kept_by_default("none")


def test_apply_method_wrapper_matches_get_and_apply(compose):
    cfg = compose("method=prompt", "method.peft.num_virtual_tokens=6")
    tokenizer = _tokenizer(cfg)
    cache = cfg.paths.cache_dir
    torch.manual_seed(0)
    one = methods.apply_method(cfg.method, models.load_model(cfg.model, cfg.task, tokenizer, cache), "encoder",
                               cfg.task, tokenizer, None, seed=0)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cache)
    two = methods.get(cfg.method).apply(model, _context(cfg, tokenizer))
    a, b = one.model.prompt_encoder["default"].embedding.weight, two.model.prompt_encoder["default"].embedding.weight
    assert torch.equal(a, b) and one.virtual_positions == two.virtual_positions == 6


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_soft_prompts_on_encoder_multiple_choice_prepend_to_every_choice_pair(compose, method):
    """An encoder scores a flat batch of (context, choice) pairs, so a soft prompt or prefix is prepended to every
    pair: each pair's score in the padded batch equals the pair scored alone."""
    from bench import shapes, tasks

    cfg = compose("task=copa", f"method={method}", "trainer.train_samples=8")
    shape = shapes.get(cfg.task.shape)
    methods.get(cfg.method).check("encoder", "multiple_choice")
    tokenizer = _tokenizer(cfg)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    model = methods.get(cfg.method).apply(model, _context(cfg, tokenizer)).model.eval()
    pipeline = shape.pipeline(cfg.task, "encoder", tokenizer, cfg.trainer.max_length, "")
    ds = pipeline.tokenize(tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer).train.select(range(3)))
    batch = pipeline.train_collate([ds[i] for i in range(3)])
    with torch.no_grad():
        scores = [float(model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits)
                  for r in ds for ids, types in zip(r["choice_input_ids"], r["choice_token_type_ids"])]
        preds, _ = pipeline.predict(model, {k: v for k, v in batch.items() if k != "labels"})
        loss = pipeline.loss(model, batch)
        bare = pipeline.loss(model.base_model, batch)  # the virtual tokens are read: without them the loss moves
    alone = torch.tensor(scores).view(3, 2)
    assert abs(float(bare) - float(loss)) > 1e-4
    assert batch["input_ids"].shape[0] == 6 and preds == alone.argmax(dim=1).tolist()
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(alone, batch["labels"]), atol=1e-5)


@pytest.mark.parametrize("task", ["copa", "sst2"])  # loss outside the model (encoder multiple choice) / inside
def test_adalora_orthogonal_regulariser_is_in_the_training_loss_of_every_shape(compose, task):
    """The training loss is the task's cross-entropy plus orth_reg_weight x R, counted once, whether the shape
    computes its loss outside the model (encoder multiple choice) or the model does (classification)."""
    from bench import shapes, tasks

    cfg = compose(f"task={task}", "method=adalora", "trainer.train_samples=8")
    shape = shapes.get(cfg.task.shape)
    tokenizer = _tokenizer(cfg)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.task, tokenizer, cfg.paths.cache_dir)
    adapted = methods.get(cfg.method).apply(model, _context(cfg, tokenizer))
    model = adapted.model.eval()  # dropout off
    pipeline = shape.pipeline(cfg.task, "encoder", tokenizer, cfg.trainer.max_length, "")
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    ds = pipeline.tokenize(data.train.select(range(4)))
    batch = pipeline.train_collate([ds[i] for i in range(4)])
    labels = batch["labels"]

    # R by hand: mean over the 2 layers x 2 modules' A (12 x 32) and B (32 x 12) of ||A A^T - I||_F, ||B^T B - I||_F
    grams = [p @ p.T if ".lora_A." in n else p.T @ p for n, p in model.named_parameters()
             if ".lora_A." in n or ".lora_B." in n]
    assert len(grams) == 2 * 2 * len(cfg.model.attention_modules) and all(g.shape == (12, 12) for g in grams)
    reg = sum(torch.sqrt(((g - torch.eye(12)) ** 2).sum()) for g in grams) / len(grams)
    assert reg.item() > 1  # A and B start random, far from orthonormal

    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        logits = model(**inputs).logits.float()
        if task == "copa":  # two choices per row, one score each
            logits = logits.view(len(labels), -1)
        plain = torch.nn.functional.cross_entropy(logits, labels)
    loss = adapted.training_loss(pipeline.loss)(model, batch)
    assert cfg.method.peft.orth_reg_weight == 0.1
    assert loss.item() == pytest.approx(plain.item() + 0.1 * reg.item(), rel=1e-5)
    # the term trains A and B: lora_E starts at zero, so the task loss alone gives them no gradient
    loss.backward()
    a = next(p for n, p in model.named_parameters() if ".lora_A." in n)
    assert a.grad is not None and a.grad.abs().sum() > 0
