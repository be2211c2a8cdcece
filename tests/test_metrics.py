"""Generation metrics shipped as local `evaluate` modules (exact_match, bleu, rouge_l) and answer extraction.

Expected values are computed by hand in the comments (n-gram counts, LCS lengths)."""
import math
import os
import subprocess
import sys

import pytest

from bench import metrics
from bench.metrics.extract import extract_last_number


# ---------------------------------------------------------------- extraction
@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("so the total is 1,250 dollars", "1250"),         # thousands comma removed
    ("12 apples, 3 pears", "3"),                       # a list comma is not a thousands comma
    ("1,2,3", "3"),
    ("the answer is 7.", "7"),                         # sentence dot is not a decimal point
    ("it costs $2.50 each", "2.50"),
    ("the change is -4 degrees", "-4"),
    ("10-3=7 and 5-3", "3"),                           # minus glued to a digit is an operator
    ("no digits here", None),
    ("", None),
])
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_extract_module_is_not_listed_as_a_metric():
    assert {"exact_match", "bleu", "rouge_l"} <= set(metrics.available())
    assert "extract" not in metrics.available()


# ---------------------------------------------------------------- exact match
def test_exact_match_numeric_equivalence_and_strip():
    em = metrics.load("exact_match")
    # hits: 72~72.0, 1,000~1000, " Paris "~"Paris", -5~-5.0, .5~0.50 ; misses: case, 1,00 (not a thousands form), 7 vs 8
    preds = ["72", "1,000", " Paris ", "-5", ".5", "paris", "1,00", "7"]
    refs = ["72.0", "1000", "Paris", "-5.0", "0.50", "Paris", "100", "8"]
    assert em.compute(predictions=preds, references=refs)["exact_match"] == pytest.approx(5 / 8)


def test_exact_match_multi_reference_matches_any():
    em = metrics.load("exact_match")
    # 1st matches its 2nd reference, 2nd matches none, 3rd (plain string reference after lists) matches
    preds = ["blue", "red", "3"]
    refs = [["green", "blue"], ["green", "blue"], "3.0"]
    assert em.compute(predictions=preds, references=refs)["exact_match"] == pytest.approx(2 / 3)
    # a string reference first, lists after: the batch format is not fixed by the first example
    assert em.compute(predictions=["a", "b"], references=["a", ["x", "b"]])["exact_match"] == 1.0


def test_exact_match_refuses_an_empty_reference_list():
    with pytest.raises(ValueError, match=r"references\[1\]"):
        metrics.load("exact_match").compute(predictions=["a", "b"], references=["a", []])


# ---------------------------------------------------------------- BLEU
def test_bleu_identical_is_one():
    bleu = metrics.load("bleu")
    out = bleu.compute(predictions=["the cat sat on the mat", "a dog ran in the park"],
                       references=["the cat sat on the mat", "a dog ran in the park"])
    assert out["bleu"] == pytest.approx(1.0)


def test_bleu_hand_computed():
    # hyp (7 tokens) vs ref (6): matched 1..4-grams 6/7, 5/6, 4/5, 3/4; hyp longer -> BP 1
    # BLEU = (6/7 * 5/6 * 4/5 * 3/4) ** (1/4) = (3/7) ** 0.25
    out = metrics.load("bleu").compute(predictions=["the cat sat on the mat today"],
                                       references=["the cat sat on the mat"])
    assert out["bleu"] == pytest.approx((3 / 7) ** 0.25)


def test_bleu_varying_reference_counts_hand_computed():
    # ex1: hyp "the cat" (2 tokens), one ref of 6 tokens; ex2: hyp equal to its 2nd ref (6 tokens), 1st ref "x".
    # All n-grams match: precisions 8/8, 6/6, 4/4, 3/3. Closest ref lengths 6 + 6 = 12 > hyp 8 -> BP = exp(1 - 12/8).
    # (Padding ex1's missing 2nd reference with '' instead of None would make its closest ref length 0 and BLEU 1.0.)
    preds = ["the cat", "a dog ran in the park"]
    refs = [["the cat sat on the mat"], ["x", "a dog ran in the park"]]
    bleu = metrics.load("bleu")
    assert bleu.compute(predictions=preds, references=refs)["bleu"] == pytest.approx(math.exp(-0.5))
    # corpus BLEU does not depend on example order (the padding must follow each example)
    assert bleu.compute(predictions=preds[::-1], references=refs[::-1])["bleu"] == pytest.approx(math.exp(-0.5))


def test_bleu_equals_sacrebleu_with_transposed_references():
    import sacrebleu

    preds = ["the quick brown fox jumps over the dog", "hello there world", "a b c d e f"]
    refs = [["the quick brown fox jumped over the lazy dog", "a fast brown fox leaps over the dog"],
            ["hello world"],
            ["a b c d e g", "a b c x e f", "f e d c b a"]]
    streams = [[refs[0][0], refs[1][0], refs[2][0]],
               [refs[0][1], None, refs[2][1]],
               [None, None, refs[2][2]]]
    expected = sacrebleu.corpus_bleu(preds, streams).score / 100
    assert 0 < expected < 1
    assert metrics.load("bleu").compute(predictions=preds, references=refs)["bleu"] == pytest.approx(expected)


def test_bleu_second_matching_reference_raises_the_score():
    # hyp "a dog ran in the park" vs "the dog ran in a park": matched 1..4-grams 6/6, 2/5 (dog ran, ran in),
    # 1/4 (dog ran in), 0/3 -> sacrebleu's exp smoothing turns the first zero into 1/(2*3); equal lengths, BP 1:
    # BLEU = (1 * 2/5 * 1/4 * 1/6) ** (1/4) = (1/60) ** 0.25.
    # Adding the hypothesis itself as a second reference makes every n-gram match -> 1.0
    bleu = metrics.load("bleu")
    pred = ["a dog ran in the park"]
    one = bleu.compute(predictions=pred, references=[["the dog ran in a park"]])["bleu"]
    two = bleu.compute(predictions=pred, references=[["the dog ran in a park", "a dog ran in the park"]])["bleu"]
    assert one == pytest.approx((1 / 60) ** 0.25)
    assert two == pytest.approx(1.0)


# ---------------------------------------------------------------- ROUGE-L
def test_rouge_l_hand_computed_lcs_with_stemming():
    # pred "the cats sat on the mat" -> stemmed [the, cat, sat, on, the, mat] (6 tokens)
    # ref  "A cat sat on mat"        -> [a, cat, sat, on, mat] (5 tokens)
    # LCS = cat sat on mat = 4: P = 4/6, R = 4/5, F = 2PR/(P+R) = 8/11
    rouge = metrics.load("rouge_l")
    assert rouge.compute(predictions=["the cats sat on the mat"],
                         references=["A cat sat on mat"])["rouge_l"] == pytest.approx(8 / 11)


def test_rouge_l_max_over_references_then_mean():
    # ex1: max(F vs unrelated ref = 0, 8/11); ex2: identical -> 1.0; mean = (8/11 + 1) / 2
    rouge = metrics.load("rouge_l")
    out = rouge.compute(predictions=["the cats sat on the mat", "green eggs and ham"],
                        references=[["completely unrelated words", "A cat sat on mat"], "green eggs and ham"])
    assert out["rouge_l"] == pytest.approx((8 / 11 + 1) / 2)


# ---------------------------------------------------------------- offline loading
def test_generation_metrics_load_with_hub_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = ("from bench import metrics\n"
            "print(metrics.load('bleu').compute(predictions=['a b c d'], references=[['a b c d']])['bleu'])\n"
            "print(metrics.load('rouge_l').compute(predictions=['a b'], references=['a b'])['rouge_l'])\n"
            "print(metrics.load('exact_match').compute(predictions=['1'], references=['1.0'])['exact_match'])\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [float(x) for x in proc.stdout.split()] == pytest.approx([1.0, 1.0, 1.0])
