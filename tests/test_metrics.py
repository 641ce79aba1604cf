"""Metrics against hand-computed values (common/metrics.py)."""
from __future__ import annotations

import math

import pytest
from PIL import Image

from common.data.sample import Sample
from common.metrics import (
    choice_correct,
    cider_d,
    consistency,
    exact_match,
    extract_choice,
    is_yes,
    normalize_answer,
    number_match,
    pope_metrics,
    score_all,
    score_family,
    short_answer_accuracy,
    tokenize_caption,
    vqa_soft_accuracy,
)

IMG = Image.new("RGB", (4, 4))


def S(id, family="gqa", answer="red", answer_type="exact", **kw):
    return Sample(id=id, family=family, images=[IMG], question="q?", answer=answer, answer_type=answer_type, **kw)


# --- normalisation -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes.", "yes"),
        ("  The Red  Circle!\n", "red circle"),
        ("Two", "2"),
        ("a dog", "dog"),
        ("dont", "don't"),
        ("don't", "don t"),  # sic: vqaEval.py turns an inner apostrophe into a space
        ("2.5", "2.5"),
        ("1,000", "1000"),
        ("left-side", "left side"),
        ("ten apples", "10 apples"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_and_numbers():
    assert exact_match("The red one.", ["red one"]) == 1.0
    assert exact_match("blue", ["red"]) == 0.0
    assert exact_match("three", ["3"]) == 1.0
    assert number_match("There are 3 circles.", ["3"]) == 1.0
    assert number_match("four", ["4"]) == 1.0
    assert number_match("4 or 5", ["5"]) == 0.0  # first number counts
    assert number_match("many", ["5"]) == 0.0


def test_vqa_soft_accuracy_by_hand():
    refs = ["red"] * 3 + ["blue"] * 7
    # leave-one-out: the 3 subsets without a "red" have 2 matches (2/3), the 7 others have 3 (1.0)
    assert vqa_soft_accuracy("Red", refs) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert vqa_soft_accuracy("blue", refs) == 1.0
    assert vqa_soft_accuracy("green", refs) == 0.0
    # one match among ten: 9 subsets with 1 match (1/3), one with none
    assert vqa_soft_accuracy("x", ["x"] + ["y"] * 9) == pytest.approx(9 / 3 / 10)
    # fewer than SOFT_MIN_REFS references: exact match
    assert short_answer_accuracy("x", ["x", "y"]) == 1.0
    assert short_answer_accuracy("x", ["x", "y", "y"]) == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)


# --- POPE ----------------------------------------------------------------------------------------------

def test_is_yes():
    assert is_yes("Yes, there is a cat.")
    assert is_yes("yes")
    assert not is_yes("No.")
    assert not is_yes("There is yes")
    assert not is_yes("")


def test_pope_metrics_by_hand():
    preds = ["yes", "yes", "no", "no", "yes", "Yes."]
    truth = ["yes", "no", "no", "yes", "yes", "no"]
    # tp=2 (0, 4), fp=2 (1, 5), tn=1 (2), fn=1 (3)
    m = pope_metrics(preds, truth)
    assert m["accuracy"] == pytest.approx(100 * 3 / 6)
    assert m["precision"] == pytest.approx(100 * 2 / 4)
    assert m["recall"] == pytest.approx(100 * 2 / 3)
    p, r = 0.5, 2 / 3
    assert m["f1"] == pytest.approx(100 * 2 * p * r / (p + r))
    assert m["yes_ratio"] == pytest.approx(100 * 4 / 6)
    never = pope_metrics(["no", "no"], ["yes", "no"])
    assert never["precision"] == 0.0 and never["f1"] == 0.0 and never["accuracy"] == 50.0
    with pytest.raises(ValueError, match="yes/no"):
        pope_metrics(["yes"], ["maybe"])


def test_score_family_pope_splits():
    samples = [
        S("a", "pope", "yes", "yesno", meta={"pope_split": "random"}),
        S("b", "pope", "no", "yesno", meta={"pope_split": "random"}),
        S("c", "pope", "yes", "yesno", meta={"pope_split": "adversarial"}),
        S("d", "pope", "no", "yesno", meta={"pope_split": "adversarial"}),
    ]
    preds = ["yes", "no", "yes", "yes"]
    m = score_family(samples, preds)
    assert m["random/f1"] == 100.0
    assert m["adversarial/f1"] == pytest.approx(100 * 2 * 0.5 * 1 / 1.5)
    assert m["f1"] == pytest.approx((100.0 + m["adversarial/f1"]) / 2)
    assert m["score"] == m["f1"]
    assert m["accuracy"] == 75.0 and m["n"] == 4


# --- multiple choice -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C) blue", "C"),
        ("The answer is D.", "D"),
        ("Answer: A", "A"),
        ("I would pick C here", "C"),
        ("blue", "C"),
        ("A red circle", "A"),  # "red circle" is not an option here, so the leading letter wins
        ("it is green, I think", "B"),
        ("none of them", None),
        ("A or B", "A"),
    ],
)
def test_extract_choice_text_options(text, expected):
    assert extract_choice(text, ["red", "green", "blue", "yellow"]) == expected


def test_extract_choice_prefers_option_text_over_article():
    assert extract_choice("A red circle", ["blue square", "red circle"]) == "B"
    assert extract_choice("B", ["A. cat", "B. dog"]) == "B"
    assert extract_choice("dog", ["A. cat", "B. dog"]) == "B"
    assert extract_choice("the answer is a dog", ["A", "B"]) is None  # lowercase "a" is an article


def test_choice_correct_letter_or_text_answer():
    assert choice_correct("B", "B", ["A", "B", "C"]) == 1.0
    assert choice_correct("(b)", "B", ["A", "B", "C"]) == 0.0  # lowercase letters are not options
    assert choice_correct("green", "green", ["red", "green"]) == 1.0
    assert choice_correct("A", "green", ["red", "green"]) == 0.0
    with pytest.raises(ValueError, match="neither"):
        choice_correct("A", "purple", ["red", "green"])


# --- CIDEr-D ---------------------------------------------------------------------------------------------

def test_tokenize_caption():
    assert tokenize_caption("A red, round ball.") == ["a", "red", "round", "ball"]


def test_cider_by_hand_two_images():
    # Two images, one reference each, all n-grams unique to their image: df = 1 everywhere, so every
    # n-gram weighs log(2) - log(1) = log 2 and cosines reduce to counting.
    refs = [["a b"], ["c d"]]
    # Image 1, candidate == reference: cos = 1 for n = 1, 2; no 3-/4-grams -> 0; same length -> no penalty.
    # CIDEr-D = 10 * (1 + 1 + 0 + 0) / 4 = 5.
    # Image 2, candidate "c": unigram cos = log2^2 / (log2 * sqrt(2) log2) = 1/sqrt(2); no bigrams;
    # length (in bigrams) 0 vs 1 -> penalty exp(-1 / 72). CIDEr-D = 10 * exp(-1/72) / sqrt(2) / 4.
    mean, scores = cider_d(["a b", "c"], refs)
    assert scores[0] == pytest.approx(5.0)
    assert scores[1] == pytest.approx(10 * math.exp(-1 / 72) / math.sqrt(2) / 4)
    assert mean == pytest.approx((scores[0] + scores[1]) / 2)


def test_cider_identical_long_caption_scores_ten_and_shared_ngrams_weigh_nothing():
    refs = [["the cat sat on the mat"], ["a dog ran in the park"]]
    _, scores = cider_d(["the cat sat on the mat", "a dog ran in the park"], refs)
    # identical captions: cosine 1 at every n (the shared unigram "the" has weight log 2 - log 2 = 0,
    # which changes both vectors equally), no length penalty -> 10
    assert scores == pytest.approx([10.0, 10.0])
    # "the" occurs in both images' references, so its IDF weight is 0 and it earns nothing
    _, s = cider_d(["the", "the"], refs)
    assert s == [0.0, 0.0]


def test_cider_clipping_and_multiple_references():
    refs = [["x y", "x z"], ["p q"], ["r s"]]
    # repeating "x" does not raise its clipped overlap: min(tf_c w, tf_r w) uses the reference count
    _, once = cider_d(["x", "p", "r"], refs)
    _, thrice = cider_d(["x x x", "p", "r"], refs)
    assert thrice[0] < once[0]
    # averaging over references, every weight log 3: "x y" vs "x y" gives cosines (1, 1, 0, 0);
    # vs "x z" the unigram cosine is 1/2 and the rest 0. Sum (1.5, 1, 0, 0), mean over n 0.625,
    # over the 2 references 0.3125, x10 -> 3.125.
    _, s = cider_d(["x y", "p q", "r s"], refs)
    assert s[0] == pytest.approx(3.125) and s[1] == pytest.approx(5.0)


def test_cider_single_image_is_zero():
    mean, _ = cider_d(["a b"], [["a b"]])
    assert mean == 0.0


def test_score_family_caption():
    samples = [
        S("c1", "caption", "a b", "caption", references=["a b"]),
        S("c2", "caption", "c d", "caption", references=["c d"]),
    ]
    m = score_family(samples, ["a b", "c d"])
    assert m["cider"] == pytest.approx(100 * 5.0) and m["score"] == m["cider"]


# --- consistency and dispatch ------------------------------------------------------------------------------

def test_consistency_by_hand():
    samples = [
        S("g1a", meta={"rephrase_group": 1}), S("g1b", meta={"rephrase_group": 1}),  # agree, correct
        S("g2a", meta={"rephrase_group": 2}), S("g2b", meta={"rephrase_group": 2}),  # agree, wrong
        S("g3a", meta={"rephrase_group": 3}), S("g3b", meta={"rephrase_group": 3}),  # disagree
        S("lone", meta={"rephrase_group": 4}),  # singleton: ignored
        S("nogroup"),
    ]
    preds = ["Red.", "the red", "blue", "Blue", "red", "blue", "red", "red"]
    m = consistency(samples, preds)
    assert m == {"consistency": pytest.approx(200 / 3), "consistent_correct": pytest.approx(100 / 3), "groups": 3.0}
    assert math.isnan(consistency([S("x")], ["red"])["consistency"])


def test_score_family_mixed_and_errors():
    samples = [
        S("q1", "count", "3", "number"),
        S("q2", "count", "4", "number"),
        S("q3", "count", "5", "number"),
    ]
    m = score_family(samples, ["three", "There are 4.", "6"])
    assert m["accuracy"] == pytest.approx(200 / 3) and m["score"] == m["accuracy"] and m["n"] == 3
    with pytest.raises(ValueError, match="one family"):
        score_family([S("a", "gqa"), S("b", "mc", "A", "choice", choices=["A", "B"])], ["x", "y"])
    bad = S("weird")
    bad.answer_type = "essay"  # bypasses Sample's own check, as a hand-edited record would
    with pytest.raises(ValueError, match="weird.*unknown answer_type 'essay'"):
        score_family([bad], ["x"])
    with pytest.raises(ValueError, match="mixes captions"):
        score_family([S("c", "caption", "a", "caption"), S("d", "caption", "b")], ["a", "b"])


def test_score_all_groups_by_family_and_accepts_mapping():
    samples = [S("a", "gqa", "red"), S("b", "mc", "B", "choice", choices=["A", "B"]), S("c", "gqa", "blue")]
    res = score_all(samples, {"a": "red", "b": "B", "c": "red"})
    assert list(res) == ["gqa", "mc"]
    assert res["gqa"]["accuracy"] == 50.0 and res["mc"]["accuracy"] == 100.0
    with pytest.raises(ValueError, match=r"predictions: none for 2 samples, e.g. \[.b., .c.\]"):
        score_all(samples, {"a": "red"})


def test_cider_matches_pycocoevalcap_golden():
    """Golden values from pycocoevalcap 1.2's `CiderScorer(n=4, sigma=6.0)` (the scorer behind
    `Cider()`), fed these already-tokenised captions; regenerate with
    `CiderScorer` += (cand, refs) for each pair, then `.compute_score()`."""
    cands = ["a red circle left of a blue square", "two small squares", "a big green triangle near the top"]
    refs = [
        ["a red circle to the left of a blue square", "red circle and blue square"],
        ["two small squares side by side", "a pair of small squares", "two squares"],
        ["a large green triangle at the top", "green triangle near the top edge"],
    ]
    mean, scores = cider_d(cands, refs)
    assert mean == pytest.approx(3.8974948525687094, abs=1e-12)
    assert scores == pytest.approx([4.33393905, 2.7468998, 4.6116457], abs=1e-7)


def test_mme_scores_by_hand():
    def m(id, cat, pair, ans):
        return S(id, "mme", ans, "yesno", meta={"mme_category": cat, "pair_id": pair})

    samples = [m("1a", "color", "1", "yes"), m("1b", "color", "1", "no"),   # both right
               m("2a", "color", "2", "yes"), m("2b", "color", "2", "no"),   # one right
               m("3a", "code_reasoning", "3", "yes"), m("3b", "code_reasoning", "3", "no")]
    preds = ["Yes", "no.", "yes", "maybe", "Yes, it is", "Nope"]
    res = score_family(samples, preds)
    # color: 3/4 questions (75), 1/2 images (50) -> 125; code_reasoning: 2/2, 1/1 -> 200
    assert res["color/acc"] == 75.0 and res["color/acc+"] == 50.0 and res["color/score"] == 125.0
    assert res["perception"] == 125.0 and res["cognition"] == 200.0 and res["score"] == 125.0


def test_unanswered_samples_are_not_scored():
    samples = [S("t1", "vqav2", "", meta={"has_answer": False}), S("t2", "vqav2", "", meta={"has_answer": False})]
    res = score_family(samples, ["dog", "cat"])
    assert res["n"] == 2 and res["unscored"] == 2 and math.isnan(res["score"])
    mixed = score_family([S("a", "gqa", "red"), S("b", "gqa", "", meta={"has_answer": False})], ["red", "x"])
    assert mixed["accuracy"] == 100.0 and mixed["unscored"] == 1


def test_choice_with_lettered_options_and_bare_texts():
    """common.data.benchmarks' SQA/MMB layout: choices "A. text", meta["options"] the bare texts."""
    s = S("sqa", "sqa", "B", "choice", choices=["A. chiasmus", "B. apostrophe"],
          meta={"options": ["chiasmus", "apostrophe"]})
    assert score_family([s], ["apostrophe"])["accuracy"] == 100.0
    assert score_family([s], ["B"])["accuracy"] == 100.0
    assert score_family([s], ["A"])["accuracy"] == 0.0
