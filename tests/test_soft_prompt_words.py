"""The nearest vocabulary tokens of a soft prompt's virtual tokens (bench.methods.soft_prompt_words): a prompt
initialised from known words reads back as those words, and a run records them in result.json."""
import json

import pytest

from bench import config, record
from bench.methods import soft_prompt_words
from bench.run import execute, prepare


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_a_prompt_initialised_from_words_reads_back_as_those_words(compose, model):
    cfg = compose(f"model={model}", "method=prompt", "method.init.mode=text", "method.init.text=great terrible",
                  "method.peft.num_virtual_tokens=4")
    prep = prepare(cfg)
    found = soft_prompt_words.nearest_tokens(prep.adapted.model, prep.tokenizer)
    assert found["source"] == "prompt" and found["k"] == soft_prompt_words.TOP_K == 5
    assert found["vocabulary"] == len(prep.tokenizer) - len(prep.tokenizer.all_special_ids)
    nearest = found["nearest_tokens"]
    assert len(nearest) == 4 and all(len(pairs) == 5 for pairs in nearest)
    # the text is repeated to the prompt's length: great, terrible, great, terrible
    assert [pairs[0][0].strip() for pairs in nearest] == ["great", "terrible", "great", "terrible"]
    assert all(pairs[0][1] == pytest.approx(1.0, abs=1e-5) for pairs in nearest)
    assert all(pairs[0][1] >= pairs[1][1] >= pairs[4][1] for pairs in nearest)  # best first
    ids = prep.tokenizer("great terrible", add_special_tokens=False)["input_ids"]
    assert [row[0] for row in found["nearest_ids"]] == ids * 2


def test_other_methods_have_no_nearest_tokens(compose):
    prep = prepare(compose("method=lora"))
    assert soft_prompt_words.nearest_tokens(prep.adapted.model, prep.tokenizer) is None


@pytest.mark.parametrize("method, source", [("prompt", "prompt"), ("ptuning", "prompt_encoder")])
def test_a_run_records_the_nearest_tokens(compose, method, source):
    cfg = compose(f"method={method}", "method.peft.num_virtual_tokens=3", "trainer.train_samples=16",
                  "trainer.eval_samples=16")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    on_disk = json.loads((config.run_dir(cfg) / record.RESULT_FILE).read_text())
    section = on_disk["soft_prompt"]
    assert section["source"] == source and section["similarity"] == "cosine"
    assert len(section["nearest_tokens"]) == 3 and all(len(p) == 5 for p in section["nearest_tokens"])
    word, cosine = section["nearest_tokens"][0][0]
    assert isinstance(word, str) and -1 <= cosine <= 1


def test_the_report_shows_the_nearest_words_of_runs_that_carry_them(tmp_path):
    from bench.report.build import collect
    from bench.report.markdown import render_markdown
    from test_report_verdicts import write_run

    root = tmp_path / "results"
    for seed, words in ((0, [[[" great", 1.0], ["good", 0.5]], [["bad", 0.75], ["poor", 0.25]]]),
                        (1, [[["fine", 0.875], [" great", 0.5]]])):
        write_run(root, "sst2", "prompt", seed, value=0.6, predictions=False,
                  soft_prompt={"source": "prompt", "similarity": "cosine", "k": 2, "vocabulary": 100,
                               "nearest_tokens": words, "nearest_ids": [[1, 2]] * len(words)})
    write_run(root, "sst2", "lora", 0, value=0.7, predictions=False)
    text = render_markdown(collect(root))
    assert "### Soft prompt, nearest words: minilm · prompt" in text
    assert "| virtual token | seed 0 | seed 1 |" in text
    assert "| 0 | great, good (1.00) | fine, great (0.88) |" in text
    assert "| 1 | bad, poor (0.75) | – |" in text
    assert "nearest words: minilm · lora" not in text
