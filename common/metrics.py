"""Pure metric functions: answer normalisation, VQA accuracy, POPE, multiple choice, CIDEr-D, consistency.

No model, no torch, no network: every function maps strings (and `Sample`s) to numbers, so each can be
checked by hand (tests/test_metrics.py). `score_family` is the one entry point the evaluation runner
uses; it dispatches on `Sample.answer_type` (and on `Sample.family` only to pick the headline metric).

Conventions
- Every metric is returned in percent (0-100), as the papers print them. CIDEr-D too: pycocoevalcap's
  `Cider().compute_score` returns e.g. 1.055 and the papers print 105.5, so `score_family` multiplies
  `cider_d` (which returns the pycocoevalcap value) by 100.
- `score` is the family's headline number (what a table shows): POPE -> F1 averaged over its negative-
  sampling splits (SparseVLM Table 1 and STF use "F1 averaged over the 3 splits"), caption -> CIDEr-D,
  everything else -> accuracy.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Mapping, Sequence

from common.data.sample import ANSWER_TYPES, Sample

# ---------------------------------------------------------------------------------------------------
# Answer normalisation, after the official VQA evaluation (GT-Vision-Lab/VQA, vqaEval.py)
# ---------------------------------------------------------------------------------------------------

# Number words -> digits ("manualMap" in vqaEval.py, which stops at ten; we go on to twenty because
# ToyWorld's counting questions can have larger answers and "eleven" vs "11" must not count as wrong).
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20",
}
_ARTICLES = {"a", "an", "the"}
# The apostrophe-less spellings vqaEval.py repairs (a subset of its `contractions` table: the entries
# that can occur in short answers; the rest are multi-apostrophe forms like "wouldn't've").
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hes": "he's", "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd",
    "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't", "mustnt": "mustn't",
    "neednt": "needn't", "shant": "shan't", "shed": "she'd", "shes": "she's", "shouldnt": "shouldn't",
    "thats": "that's", "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't",
    "whats": "what's", "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
          ",", "?", "!", "*", "#", "%", "^", "&", "$", ":", "'", "~", "|"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: vqaEval.py's regex, kept verbatim
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_answer(text: str) -> str:
    """Normalise a free-text answer the way the VQA evaluation does.

    Lowercase; strip punctuation (a period between digits survives: "2.5"); number words -> digits
    ("two" -> "2"); drop articles ("a", "an", "the"); repair apostrophe-less contractions; collapse
    whitespace. Example: ``normalize_answer("Two dogs.") == "2 dogs"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _process_punctuation(text)
    words = []
    for w in text.split():
        w = _NUMBER_WORDS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------
# Short answers: exact match, VQAv2 soft accuracy, numbers
# ---------------------------------------------------------------------------------------------------

SOFT_MIN_REFS = 3
"""With at least this many reference answers, open answers use VQAv2's soft accuracy (VQAv2 has ten
human answers per question); with fewer, exact match. Three is the fewest for which min(m/3, 1) can
take a value other than 0 or 1."""


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def vqa_soft_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQAv2 accuracy: min(#humans that gave this answer / 3, 1), averaged over the ten leave-one-out
    subsets of the references, exactly as vqaEval.py does (so 3 matches of 10 give 0.9, not 1.0).

    With references r_1..r_K and m(S) = #{r in S : norm(r) == norm(pred)}:
        acc = mean_k min(m(R \\ {r_k}) / 3, 1).
    """
    if not references:
        raise ValueError("references: vqa_soft_accuracy needs at least one reference answer")
    pred = normalize_answer(prediction)
    match = [normalize_answer(r) == pred for r in references]
    total = sum(match)
    return sum(min((total - m) / 3.0, 1.0) for m in match) / len(match)


_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def number_match(prediction: str, references: Sequence[str]) -> float:
    """Counting answers: exact match after normalisation, else the first number in the prediction
    ("there are 3 circles" -> 3) compared with the reference numbers."""
    if exact_match(prediction, references):
        return 1.0
    found = _NUMBER_RE.search(normalize_answer(prediction))
    if found is None:
        return 0.0
    refs = {normalize_answer(r) for r in references}
    return float(found.group(0) in refs)


def short_answer_accuracy(prediction: str, references: Sequence[str]) -> float:
    """Exact match with fewer than SOFT_MIN_REFS references, VQAv2 soft accuracy with more."""
    if len(references) >= SOFT_MIN_REFS:
        return vqa_soft_accuracy(prediction, references)
    return exact_match(prediction, references)


# ---------------------------------------------------------------------------------------------------
# Yes/no (POPE)
# ---------------------------------------------------------------------------------------------------

def is_yes(text: str) -> bool:
    """A prediction counts as "yes" iff its normalised form starts with the word "yes"."""
    words = normalize_answer(text).split()
    return bool(words) and words[0] == "yes"


def pope_metrics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio (in percent), "yes" being the positive class.

    Ground-truth answers must be "yes"/"no" (any case/punctuation). Precision is 0 when the model never
    says yes (POPE's eval script would divide by zero).
    """
    if len(predictions) != len(answers):
        raise ValueError(f"predictions: {len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("answers: pope_metrics needs at least one sample")
    tp = fp = tn = fn = 0
    for pred, ans in zip(predictions, answers):
        truth = normalize_answer(ans)
        if truth not in ("yes", "no"):
            raise ValueError(f"answers: POPE answers must be yes/no, got {ans!r}")
        p, t = is_yes(pred), truth == "yes"
        tp += p and t
        fp += p and not t
        tn += (not p) and (not t)
        fn += (not p) and t
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n,
    }


# MME (Fu et al. 2023): 10 perception and 4 cognition subtasks, two yes/no questions per image.
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_answer(text: str) -> str:
    """MME's `calculation.py::parse_pred_ans`: "yes"/"no" if the answer is, or its first four characters
    contain, that word; else "other" (always wrong)."""
    pred = text.strip().lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, float]:
    """MME scores as its official `calculation.py` computes them.

    Per category (`meta["mme_category"]`): acc = % questions right, acc+ = % images (`meta["pair_id"]`)
    with both questions right, score = acc + acc+ (0-200). `perception` / `cognition` = sums of the
    category scores of each group (max 2000 / 800), over the categories present.
    """
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if "mme_category" not in s.meta:
            raise ValueError(f"samples: sample {s.id!r} lacks meta['mme_category'], which MME scoring needs")
        by_cat[str(s.meta["mme_category"])].append(i)
    out: dict[str, float] = {}
    for cat, idx in sorted(by_cat.items()):
        right = {i: mme_answer(predictions[i]) == normalize_answer(samples[i].answer) for i in idx}
        pairs: dict[object, list[bool]] = defaultdict(list)
        for i in idx:
            pairs[samples[i].meta.get("pair_id", samples[i].id)].append(right[i])
        acc = 100.0 * sum(right.values()) / len(idx)
        acc_plus = 100.0 * sum(all(v) for v in pairs.values()) / len(pairs)
        out[f"{cat}/acc"], out[f"{cat}/acc+"], out[f"{cat}/score"] = acc, acc_plus, acc + acc_plus
    out["perception"] = sum(out[f"{c}/score"] for c in MME_PERCEPTION if c in by_cat)
    out["cognition"] = sum(out[f"{c}/score"] for c in MME_COGNITION if c in by_cat)
    return out


# ---------------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_letters(choices: Sequence[str]) -> list[str]:
    """The letters of the options: the choices themselves if they are single letters ("A", "B", ...),
    else "A", "B", ... in order."""
    if all(len(c.strip()) == 1 and c.strip().upper() in _LETTERS for c in choices):
        return [c.strip().upper() for c in choices]
    return list(_LETTERS[: len(choices)])


def _option_text(choice: str) -> str:
    """An option's text without a leading label ("B. blue" / "(B) blue" -> "blue"), normalised."""
    return normalize_answer(re.sub(r"^\s*[\(\[]?[A-Z][\)\]\.:]\s*", "", choice))


def extract_choice(text: str, choices: Sequence[str]) -> str | None:
    """The option letter a free-text answer picks, or None if it names none (or several) of them.

    Tried in order: the whole answer is an option's text (normalised); a leading letter ("B", "B.",
    "(B)", "B) red"); "answer is B" / "Answer: B"; a single standalone capital option letter anywhere;
    the only option text contained in the answer.
    """
    letters = option_letters(choices)
    allowed = "".join(letters)
    s = text.strip()
    has_text = letters != [c.strip().upper() for c in choices]
    texts = [_option_text(c) for c in choices] if has_text else []
    if has_text:  # "A red circle" names the option "red circle", not option A
        norm = normalize_answer(s)
        for letter, t in zip(letters, texts):
            if t and norm == t:
                return letter
    m = re.match(rf"^[\(\[]?([{allowed}])(?:[\)\]\.:,]|\s|$)", s)
    if m:
        return m.group(1)
    m = re.search(rf"(?i:answer)(?: is|:)?\s*[\(\[]?([{allowed}])(?![A-Za-z])", s)
    if m:
        return m.group(1)
    standalone = set(re.findall(rf"(?<![A-Za-z])([{allowed}])(?![A-Za-z])", s))
    if len(standalone) == 1:
        return standalone.pop()
    if has_text:
        norm = normalize_answer(s)
        hits = [letter for letter, t in zip(letters, texts) if t and re.search(rf"\b{re.escape(t)}\b", norm)]
        if len(hits) == 1:
            return hits[0]
    return None


def choice_correct(prediction: str, answer: str, choices: Sequence[str]) -> float:
    """1.0 if the option extracted from `prediction` is the reference option. `answer` may be the
    letter or the option text."""
    letters = option_letters(choices)
    truth = answer.strip()
    if truth.upper() in letters and len(truth) == 1:
        truth_letter = truth.upper()
    else:
        texts = [_option_text(c) for c in choices]
        if _option_text(truth) not in texts:
            raise ValueError(f"answer: {answer!r} is neither an option letter nor an option of {list(choices)}")
        truth_letter = letters[texts.index(_option_text(truth))]
    return float(extract_choice(prediction, choices) == truth_letter)


# ---------------------------------------------------------------------------------------------------
# CIDEr-D (Vedantam et al., CVPR 2015, Sec. 4 and the "CIDEr-D" variant of Sec. 6)
# ---------------------------------------------------------------------------------------------------

def tokenize_caption(text: str) -> list[str]:
    """Lowercase, punctuation replaced by spaces, split on whitespace.

    Changed from pycocoevalcap: it runs the Java PTB tokenizer, which is not available offline
    (papers/dyrate.md §10). Differences are limited to contractions ("don't" -> "don t" here,
    "do n't" there).
    """
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], *, n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of each candidate against its references, and the corpus mean (pycocoevalcap's scale).

    For candidate c_i with references S_i (Vedantam et al. 2015, Eq. 2-5 and CIDEr-D):
        g^n(x)     = TF-IDF vector of the n-grams of x, IDF = log(|I| / df(w)), df counted over the
                     reference sets of the evaluated corpus I (one count per image)
        CIDEr-D_n  = 10/|S_i| * sum_j exp(-(l_c - l_j)^2 / (2 sigma^2))
                     * <min(g^n(c), g^n(s_j)), g^n(s_j)> / (||g^n(c)|| ||g^n(s_j)||)
        CIDEr-D    = mean over n = 1..4 of CIDEr-D_n.
    As in pycocoevalcap's `cider_scorer.py` (which the papers use), the length l is counted in bigrams,
    and a corpus of a single image scores 0 (every IDF is log(1/1) = 0).

    Returns:
        (mean score, per-candidate scores), e.g. mean 1.055 for a model the papers list at 105.5.
    """
    if len(candidates) != len(references):
        raise ValueError(f"references: {len(candidates)} candidates for {len(references)} reference sets")
    if not candidates:
        raise ValueError("candidates: cider_d needs at least one candidate")
    cand_counts = [_ngrams(tokenize_caption(c), n) for c in candidates]
    ref_counts = []
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"references: candidate {i} has no reference captions")
        ref_counts.append([_ngrams(tokenize_caption(r), n) for r in refs])

    df: Counter = Counter()
    for refs in ref_counts:
        for gram in set(g for r in refs for g in r):
            df[gram] += 1
    log_n_images = math.log(float(len(ref_counts)))

    def vec(counts: Counter) -> tuple[list[dict], list[float], int]:
        v: list[dict] = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            v[k][gram] = tf * (log_n_images - math.log(max(1.0, df[gram])))
            norm[k] += v[k][gram] ** 2
            if k == 1:  # sic: pycocoevalcap measures length in bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, refs in zip(cand_counts, ref_counts):
        v_c, norm_c, len_c = vec(cand)
        total = [0.0] * n
        for ref in refs:
            v_r, norm_r, len_r = vec(ref)
            penalty = math.exp(-((len_c - len_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, v_r[k].get(g, 0.0)) * v_r[k].get(g, 0.0) for g, w in v_c[k].items())
                if norm_c[k] != 0 and norm_r[k] != 0:
                    val /= norm_c[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(10.0 * (sum(total) / n) / len(refs))
    return sum(scores) / len(scores), scores


# ---------------------------------------------------------------------------------------------------
# Consistency across rephrasings (ConBench-like)
# ---------------------------------------------------------------------------------------------------

def _options(sample: Sample) -> list[str]:
    """The options of a choice question: ToyWorld keeps letters in `choices` and the option texts in
    `meta["options"]` (same order); use the texts when they are there, so "circle" can name option B."""
    choices = list(sample.choices or [])
    texts = sample.meta.get("options")
    if (isinstance(texts, (list, tuple)) and len(texts) == len(choices)
            and option_letters(choices) == list(_LETTERS[: len(choices)])
            and all(isinstance(t, str) for t in texts)):
        return [str(t) for t in texts]
    return choices


def canonical_answer(sample: Sample, prediction: str) -> str:
    """The form in which two predictions to rephrasings of one question are compared: the option letter
    for multiple choice, yes/no for yes/no questions, the first number for counts, else the normalised
    text."""
    if sample.answer_type == "choice" and sample.choices:
        return extract_choice(prediction, _options(sample)) or "?"
    if sample.answer_type == "yesno":
        return "yes" if is_yes(prediction) else "no"
    if sample.answer_type == "number":
        found = _NUMBER_RE.search(normalize_answer(prediction))
        return found.group(0) if found else normalize_answer(prediction)
    return normalize_answer(prediction)


def consistency(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, float]:
    """ConBench-like consistency over groups of rephrased questions (`meta["rephrase_group"]`).

    consistency:         % of groups (with >= 2 members) whose answers all agree (see `canonical_answer`)
    consistent_correct:  % of groups whose answers all agree and are all correct
    groups:              number of such groups (0 -> the two rates are NaN)

    Changed from ConBench: its ConScore[D] compares a model's answers across *prompt types* (yes/no,
    choice, VQA, caption) of one image with a GPT judge; ours compares answers to paraphrases of one
    question, so no judge is needed.
    """
    groups: dict[object, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if "rephrase_group" in s.meta:
            groups[s.meta["rephrase_group"]].append(i)
    groups = {g: idx for g, idx in groups.items() if len(idx) >= 2}
    if not groups:
        return {"consistency": math.nan, "consistent_correct": math.nan, "groups": 0.0}
    agree = agree_correct = 0
    for idx in groups.values():
        forms = {canonical_answer(samples[i], predictions[i]) for i in idx}
        if len(forms) == 1:
            agree += 1
            agree_correct += all(sample_correct(samples[i], predictions[i]) == 1.0 for i in idx)
    return {
        "consistency": 100.0 * agree / len(groups),
        "consistent_correct": 100.0 * agree_correct / len(groups),
        "groups": float(len(groups)),
    }


# ---------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------

PRIMARY_METRIC = {"pope": "f1", "caption": "cider", "mme": "perception"}
"""The headline metric (`score`) per family; any other family uses "accuracy"."""


def sample_correct(sample: Sample, prediction: str) -> float:
    """Per-sample score in [0, 1] for every answer type except "caption" (CIDEr is corpus-level)."""
    t = sample.answer_type
    if t == "exact":
        return short_answer_accuracy(prediction, sample.references)
    if t == "number":
        return number_match(prediction, sample.references)
    if t == "yesno":
        return float(is_yes(prediction) == (normalize_answer(sample.answer) == "yes"))
    if t == "choice":
        if not sample.choices:
            raise ValueError(f"sample {sample.id!r}: answer_type 'choice' but no choices")
        return choice_correct(prediction, sample.answer, _options(sample))
    if t == "caption":
        raise ValueError(f"sample {sample.id!r}: captions have no per-sample correctness; use cider_d")
    raise ValueError(f"sample {sample.id!r}: unknown answer_type {t!r}; expected one of {ANSWER_TYPES}")


def score_family(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, float]:
    """All metrics of one family's samples, in percent; `score` is the headline (`PRIMARY_METRIC`).

    - caption:   cider (CIDEr-D x 100; document frequencies over this family's references)
    - yesno:     accuracy, precision, recall, f1, yes_ratio; with `meta["pope_split"]` also
                 `<split>/<metric>` per split, and f1 = the mean of the per-split F1s; with
                 `meta["mme_category"]` also MME's per-category acc/acc+/score, perception, cognition
    - exact, number, choice: accuracy (VQAv2 soft accuracy where a sample has >= SOFT_MIN_REFS refs)
    - any family with `meta["rephrase_group"]`: consistency, consistent_correct, groups
    Always: n (number of samples); `unscored` counts samples with `meta["has_answer"] is False`.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"predictions: {len(predictions)} predictions for {len(samples)} samples")
    if not samples:
        raise ValueError("samples: score_family needs at least one sample")
    families = sorted({s.family for s in samples})
    if len(families) != 1:
        raise ValueError(f"samples: score_family scores one family at a time, got {families}; use score_all")
    family = families[0]
    for s in samples:
        if s.answer_type not in ANSWER_TYPES:
            raise ValueError(f"sample {s.id!r}: unknown answer_type {s.answer_type!r}; expected one of {ANSWER_TYPES}")
    out: dict[str, float] = {"n": float(len(samples))}
    # Samples without a public answer (VQAv2 test-dev, MMBench test: meta["has_answer"] False) are
    # generated but not scored; a family with none left scores NaN.
    keep = [i for i, s in enumerate(samples) if s.meta.get("has_answer", True) is not False]
    if len(keep) < len(samples):
        out["unscored"] = float(len(samples) - len(keep))
        samples, predictions = [samples[i] for i in keep], [predictions[i] for i in keep]
        if not samples:
            out["score"] = math.nan
            return out
    types = {s.answer_type for s in samples}

    if "caption" in types:
        if types != {"caption"}:
            raise ValueError(f"samples: family {family!r} mixes captions with {sorted(types - {'caption'})}")
        mean, _ = cider_d(list(predictions), [s.references for s in samples])
        out["cider"] = 100.0 * mean
    else:
        out["accuracy"] = 100.0 * sum(sample_correct(s, p) for s, p in zip(samples, predictions)) / len(samples)
        if types == {"yesno"}:
            out.update(pope_metrics(predictions, [s.answer for s in samples]))
            if all("mme_category" in s.meta for s in samples):
                out.update(mme_scores(samples, predictions))
            splits = sorted({str(s.meta["pope_split"]) for s in samples if "pope_split" in s.meta})
            if splits:
                for split in splits:
                    idx = [i for i, s in enumerate(samples) if str(s.meta.get("pope_split")) == split]
                    m = pope_metrics([predictions[i] for i in idx], [samples[i].answer for i in idx])
                    out.update({f"{split}/{k}": v for k, v in m.items()})
                out["f1"] = sum(out[f"{split}/f1"] for split in splits) / len(splits)
    if any("rephrase_group" in s.meta for s in samples):
        cons = consistency(samples, predictions)
        if cons["groups"]:  # ToyWorld tags every sample; groups exist only with rephrasings > 1
            out.update(cons)
    primary = PRIMARY_METRIC.get(family, "accuracy")
    if primary not in out:  # e.g. a "pope" family scored as choice questions
        primary = "cider" if "cider" in out else "accuracy"
    out["score"] = out[primary]
    return out


def score_all(samples: Sequence[Sample], predictions: Sequence[str] | Mapping[str, str]) -> dict[str, dict[str, float]]:
    """`score_family` for each family present, in first-appearance order. `predictions` is a list
    aligned with `samples` or a mapping from sample id to prediction."""
    if isinstance(predictions, Mapping):
        missing = [s.id for s in samples if s.id not in predictions]
        if missing:
            raise ValueError(f"predictions: none for {len(missing)} samples, e.g. {missing[:3]}")
        predictions = [predictions[s.id] for s in samples]
    by_family: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_family.setdefault(s.family, []).append(i)
    return {
        fam: score_family([samples[i] for i in idx], [predictions[i] for i in idx])
        for fam, idx in by_family.items()
    }

