"""trainer=gpu (one GPU, filled) and task=synthetic_lm (throughput only: every training row max_length tokens)."""
from bench import checks


def test_the_gpu_preset_composes_and_validates_with_a_decoder(compose):
    cfg = checks.validate(compose("trainer=gpu", "task=synthetic_lm", "model=smollm2-135m-random", "method=lora"))
    tr = cfg.trainer
    assert (tr.device, tr.mixed_precision, tr.batch_size, tr.max_length) == ("cuda", "bf16", 16, 1024)
    assert tr.compile and tr.optimizer_impl == "fused" and tr.throughput_warmup_steps >= 1
    assert cfg.model.kind == "decoder" and cfg.task.synthetic is not None


def test_synthetic_rows_fill_max_length_and_are_the_same_every_time(compose):
    from bench import run

    cfg = checks.validate(compose("task=synthetic_lm", "model=tiny-llama", "method=full", "trainer.max_length=96",
                                  "task.synthetic.train_rows=6", "task.synthetic.validation_rows=3",
                                  "task.synthetic.words=120"))
    prep = run.prepare(cfg)
    assert prep.data.source["kind"] == "synthetic"
    assert prep.train_lengths == [96] * 6  # 120 words are more than 96 tokens: every row is cut to max_length
    assert len(prep.data.validation) == 3
    again = run.prepare(cfg)
    assert again.data.train["text"] == prep.data.train["text"]  # a fixed seed: the same rows every run
