"""ToyWorld: determinism, split disjointness, valid samples per family, grids, tokenizer coverage, errors."""
from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest

from common.data.sample import Sample
from common.data.tokenizer import BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS, UNK, build_tokenizer, load_tokenizer, \
    save_tokenizer
from common.data.toyworld import (
    FAMILIES, LETTERS, POPE_SPLITS, SPLITS, make_sample, scene_split, toyworld_split,
    toyworld_stream,
)
from common.data.toyworld_render import Obj, Scene, render


def _fingerprint(samples: list[Sample]) -> list[tuple]:
    return [(s.id, s.family, s.question, s.answer, tuple(s.references), tuple(im.tobytes() for im in s.images))
            for s in samples]


# sha256 of (question | answer | scene key) of the first 60 six-turn training dialogues (seed 0, the
# stage-2 mix), recorded from the generator toy model v5 was trained with (commit db78e7e).
V5_DIALOGUES_SHA256 = "2062ac6688c6a4de6e6ed1dbbd1cd47d5f1ce54da51ef14b95b41bab46908553"


def test_same_seed_same_bytes_and_questions():
    a = toyworld_split("val", 24, seed=3)
    b = toyworld_split("val", 24, seed=3)
    assert _fingerprint(a) == _fingerprint(b)
    c = toyworld_split("val", 24, seed=4)
    assert [s.question for s in a] != [s.question for s in c] or _fingerprint(a) != _fingerprint(c)


def test_splits_are_disjoint_by_scene():
    keys = {}
    for split in SPLITS:
        samples = toyworld_split(split, 96, seed=0)
        keys[split] = {s.meta["scene_key"] for s in samples}
        # every scene hashes to the split it was drawn for, so no scene can be drawn by another split
        assert all(scene_split(k) == split for k in keys[split])
        assert all(s.meta["split"] == split for s in samples)
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_valid_samples_in_vocabulary(family):
    tok = build_tokenizer()
    unk = tok.token_to_id(UNK)
    samples = toyworld_split("test", 24, seed=1, families=(family,))
    assert len(samples) == 24 and len({s.id for s in samples}) == 24
    for s in samples:
        assert isinstance(s, Sample) and s.family == family
        frames = 3 if family == "video" else 1
        assert len(s.images) == frames and all(im.size == (96, 96) and im.mode == "RGB" for im in s.images)
        for text in [s.question, *s.references]:
            assert unk not in tok.encode(text).ids, text
        if family != "caption":
            assert len(tok.encode(s.answer).ids) == 1, s.answer  # one-word answers
        if family == "mc":
            assert s.answer in s.choices and s.answer_type == "choice"
            assert s.meta["options"][s.choices.index(s.answer)] == s.meta["answer_text"]
        if family == "caption":
            assert len(s.references) == 3 and s.answer_type == "caption"
        if family == "pope":
            assert s.answer in ("yes", "no") and s.meta["pope_split"] in POPE_SPLITS


def test_pope_balanced_and_all_negative_splits():
    samples = toyworld_split("test", 60, seed=0, families=("pope",))
    c = Counter(s.answer for s in samples)
    assert c["yes"] == c["no"] == 30
    negs = Counter(s.meta["pope_split"] for s in samples if s.answer == "no")
    assert set(negs) == set(POPE_SPLITS) and min(negs.values()) == 10


def test_answers_are_not_blind_guessable():
    """The most frequent answer of each family stays well below 50% (except the yes/no-like ones)."""
    samples = toyworld_split("val", 8 * 40, seed=0)
    by_fam: dict[str, Counter] = {}
    for s in samples:
        by_fam.setdefault(s.family, Counter())[s.answer] += 1
    for fam in ("textvqa", "count", "scene", "mc", "video"):
        top = by_fam[fam].most_common(1)[0][1] / sum(by_fam[fam].values())
        assert top < 0.35, (fam, by_fam[fam])


def test_answer_matches_the_scene():
    """The renderer draws what the question talks about: the answer colour is in the image's pixels."""
    from common.data.toyworld_render import BACKGROUNDS, COLORS

    for s in toyworld_split("val", 20, seed=5, families=("scene", "gqa")):
        px = {tuple(p) for p in np.asarray(s.images[0]).reshape(-1, 3)}
        if s.family == "scene":
            assert BACKGROUNDS[s.answer] in px
        elif s.answer in COLORS:
            assert COLORS[s.answer] in px


@pytest.mark.parametrize("grid", [12, 24])
def test_grid_gives_one_patch_per_cell(grid):
    s = toyworld_split("val", 1, seed=0, families=("gqa",), grid=grid)[0]
    assert s.images[0].size == (grid * 8, grid * 8)
    assert (s.images[0].size[0] // 8) ** 2 == {12: 144, 24: 576}[grid]
    big = toyworld_split("val", 1, seed=0, families=("gqa",), grid=12, image_size=192)[0]
    assert big.images[0].size == (192, 192)  # 16 px cells: still 12 x 12 objects' lattice


def test_objects_occupy_few_patches():
    """Token-loss sensitivity: every object lives in 1 or 4 of the 144 patches."""
    for s in toyworld_split("val", 40, seed=2, families=("gqa", "count")):
        assert s.meta["grid"] == 12
    o_small, o_large = Obj("circle", "red", "small", 2, 3), Obj("tile", "blue", "large", 5, 5, "7")
    img = np.asarray(render(Scene(12, "black", (o_small, o_large))))
    changed = {(r // 8, c // 8) for r, c in zip(*np.nonzero((img != img[0, 0]).any(-1)))}
    assert changed == {(2, 3), (5, 5), (5, 6), (6, 5), (6, 6)}


def test_rephrasings_share_group_and_answer():
    samples = toyworld_split("test", 8, seed=0, rephrasings=3)
    assert len(samples) == 24
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.meta["rephrase_group"], []).append(s)
    assert len(groups) == 8
    for g in groups.values():
        assert len({s.answer for s in g}) == 1 and len({s.meta["scene_key"] for s in g}) == 1
        assert len({s.question for s in g}) == 3


def test_stream_is_deterministic_and_resumable():
    a = [s.question for s in islice(toyworld_stream(seed=1), 12)]
    b = [s.question for s in islice(toyworld_stream(seed=1, start=6), 6)]
    assert a[6:] == b
    assert make_sample("train", 1, 4, "gqa").question == make_sample("train", 1, 4, "gqa").question


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val", n=2, families=("nope",)), "families"),
    (dict(split="val", n=-1), "n must"),
    (dict(split="dev", n=2), "split"),
    (dict(split="val", n=2, grid=12, image_size=100), "not divisible"),
    (dict(split="val", n=2, grid=3), "grid"),
    (dict(split="val", n=2, version=3), "data version"),
])
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toyworld_split(**kwargs)


def test_tokenizer_round_trip(tmp_path):
    tok = build_tokenizer()
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    text = "is the red circle left or right of the blue tile ?"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path)
    assert again.get_vocab() == tok.get_vocab() and again.encode(text).ids == ids
    assert build_tokenizer().get_vocab() == tok.get_vocab()  # deterministic ids
    assert {PAD, BOS, EOS, IMAGE} <= set(tok.get_vocab())


def test_dialogue_turns_share_one_training_scene_and_never_repeat_a_question():
    from common.data.toyworld import make_dialogue

    mix = {"gqa": 3.0, "pope": 1.5, "textvqa": 1.5, "count": 2.5, "scene": 0.5, "mc": 1.5}
    for i in range(20):
        turns = make_dialogue("train", 0, i, mix, 6)
        assert len(turns) <= 6 and len(turns) >= 3
        assert len({s.meta["scene_key"] for s in turns}) == 1 and scene_split(turns[0].meta["scene_key"]) == "train"
        assert all(s.images[0] is turns[0].images[0] for s in turns)  # rendered once
        asked = [(s.meta["qkind"], s.question.split(" options")[0]) for s in turns]
        assert len(set(asked)) == len(asked)
        assert all(s.family in mix for s in turns)
    a, b = make_dialogue("train", 0, 7, mix, 6), make_dialogue("train", 0, 7, mix, 6)
    assert _fingerprint(a) == _fingerprint(b)
    with pytest.raises(ValueError, match="turns"):
        make_dialogue("train", 0, 0, mix, 0)


def test_dialogue_weights_name_known_families():
    from common.data.toyworld import make_dialogue

    turns = make_dialogue("train", 0, 1, {"lookup": 1.0}, 2)  # training-only families alone are fine
    assert turns and all(s.family == "lookup" for s in turns)
    for bad in ({"letterz": 1.0}, {}):
        with pytest.raises(ValueError, match="unknown families"):
            make_dialogue("train", 0, 0, bad, 3)


def test_dialogue_counts_count_the_given_scene():
    """Counting on a given scene counts its objects (the benchmark's counts are drawn count-first instead)."""
    import random

    from common.data.toyworld import _ask_count
    from common.data.toyworld_render import PLURALS

    scene = Scene(12, "gray", (Obj("circle", "red", "small", 0, 0), Obj("circle", "blue", "large", 4, 4),
                               Obj("cross", "red", "small", 8, 8)))
    seen = set()
    for k in range(60):
        q = _ask_count(random.Random(k), scene)
        seen.add(q.kind)
        if q.kind == "count_all":
            assert q.answer == "3"
        elif q.kind == "count_shape":
            shape = next(sh for sh, pl in PLURALS.items() if pl == q.args["shapes"])
            assert q.answer == str(sum(o.shape == shape for o in scene.objects))
        else:
            assert q.answer == str(sum(o.color == q.args["color"] for o in scene.objects))
    assert seen == {"count_all", "count_shape", "count_color"}


def test_dialogue_defaults_draw_toy_model_v5s_dialogues():
    """With `repeat_p` and `pope_adversarial` at 0 (their defaults) the dialogue stream is the one the
    committed v5 recipe was trained on: its fingerprint was recorded before the two knobs existed."""
    import hashlib

    from common.data.toyworld import make_dialogue
    from common.models.toy_train import DIALOGUE_MIX

    h = hashlib.sha256()
    for i in range(60):
        for s in make_dialogue("train", 0, i, DIALOGUE_MIX, 6, repeat_p=0.0, pope_adversarial=0.0):
            h.update(f"{s.question}|{s.answer}|{s.meta['scene_key']}".encode())
    assert h.hexdigest() == V5_DIALOGUES_SHA256


def test_repeat_scenes_repeat_an_attribute_and_counting_turns_favour_it():
    import random

    from common.data.toyworld import make_dialogue, repeat_scene
    from common.models.toy_train import DIALOGUE_MIX

    for k in range(40):
        scene = repeat_scene(random.Random(k), 12)
        colors = Counter(o.color for o in scene.objects)
        shapes = Counter(o.shape for o in scene.objects)
        assert max(colors.values()) >= 2 or max(shapes.values()) >= 2
        assert len({(o.color, o.shape) for o in scene.objects}) == len(scene.objects)

    def subset_counts_of_two_or_more(**kw) -> int:
        return sum(s.meta.get("qkind") in ("count_color", "count_shape") and int(s.answer) >= 2
                   for i in range(150) for s in make_dialogue("train", 0, i, DIALOGUE_MIX, 6, **kw))

    plain, repeated = subset_counts_of_two_or_more(), subset_counts_of_two_or_more(repeat_p=0.5)
    assert repeated >= 1.5 * plain > 0


def test_pope_adversarial_makes_dialogue_negatives_share_an_attribute():
    from common.data.toyworld import TEMPLATES, make_dialogue

    prefix, suffix = TEMPLATES["exist"][0].split("{obj}")
    negatives = checked = 0
    for i in range(120):
        for s in make_dialogue("train", 0, i, {"pope": 1.0, "gqa": 1.0}, 4, pope_adversarial=1.0):
            if s.family != "pope" or s.answer != "no":
                continue
            negatives += 1
            assert s.meta["pope_split"] == "adversarial"
            if s.meta["template"] == 0:  # the canonical phrasing names the absent object
                checked += 1
                color, shape = s.question[len(prefix):-len(suffix)].split()
                objs = Scene.from_key(s.meta["scene_key"]).objects
                assert any(o.color == color or o.shape == shape for o in objs)
                assert not any(o.color == color and o.shape == shape for o in objs)
    assert negatives >= 20 and checked >= 5


@pytest.mark.parametrize("kw", [{"repeat_p": 1.5}, {"pope_adversarial": -0.1}])
def test_dialogue_knobs_must_be_probabilities(kw):
    from common.data.toyworld import make_dialogue

    with pytest.raises(ValueError, match=next(iter(kw))):
        make_dialogue("train", 0, 0, {"gqa": 1.0}, 3, **kw)


def test_scene_from_key_inverts_key_for_images_and_clips():
    for s in toyworld_split("val", 16, seed=0):
        scene = Scene.from_key(s.meta["scene_key"])
        assert scene.key() == s.meta["scene_key"].split("||")[0]
        assert render(scene, 8).tobytes() == s.images[0].tobytes()


def _scene_objects(sample: Sample) -> dict[str, tuple[float, float]]:
    """name -> (row, col) centre in cells, of the scene the sample was rendered from."""
    return {o.name(): o.center for o in Scene.from_key(sample.meta["scene_key"]).objects}


def test_version_2_spatial_questions_place_one_object_in_the_image():
    samples = [s for s in toyworld_split("val", 120, seed=0, families=("gqa",), version=2)
               if s.meta["qtype"] == "relation"]
    assert {s.meta["qkind"] for s in samples} == {"side_lr", "side_tb"}
    assert {s.answer for s in samples} == {"left", "right", "top", "bottom"}
    for s in samples:
        obj = next(n for n in _scene_objects(s) if f"the {n} " in s.question)
        row, col = _scene_objects(s)[obj]
        pos, mid = (col if s.meta["qkind"] == "side_lr" else row), s.meta["grid"] / 2
        assert abs(pos - mid) >= 1  # never within a cell of the midline
        assert s.answer == ({"side_lr": ("left", "right"), "side_tb": ("top", "bottom")}[s.meta["qkind"]])[pos > mid]


def test_version_2_mc_answers_with_the_option_text_and_scores_it():
    from common.metrics import sample_correct

    samples = toyworld_split("val", 40, seed=0, families=("mc",), version=2)
    for s in samples:
        assert s.choices == s.meta["options"] and s.answer in s.choices and len(set(s.choices)) == 4
        assert "options : " + " , ".join(s.choices) in s.question
        assert sample_correct(s, s.answer) == 1.0
        assert sample_correct(s, next(c for c in s.choices if c != s.answer)) == 0.0
        assert sample_correct(s, "A") == float(s.choices[0] == s.answer)  # a letter still names an option


def test_version_1_keeps_the_letter_and_pairwise_design():
    """Every committed toy model is trained on version 1 and evaluated on it."""
    mc = toyworld_split("val", 20, seed=0, families=("mc",), version=1)
    assert all(s.answer in LETTERS and s.choices == list(LETTERS) and "answer with the letter" in s.question
               for s in mc)
    gqa = toyworld_split("val", 120, seed=0, families=("gqa",), version=1)
    assert {s.meta["qkind"] for s in gqa if s.meta["qtype"] == "relation"} == {"rel_lr", "rel_ab"}
    # every other family is drawn identically in both versions
    for fam in ("pope", "textvqa", "count", "scene", "caption", "video"):
        assert _fingerprint(toyworld_split("val", 6, seed=0, families=(fam,), version=1)) == \
            _fingerprint(toyworld_split("val", 6, seed=0, families=(fam,), version=2))


def test_checkpoint_data_version(tmp_path):
    import json

    from common.paths import CHECKPOINTS

    TOY_CHECKPOINT, TOY_CHECKPOINT_V1 = CHECKPOINTS / "toy-llava", CHECKPOINTS / "toy-llava-v1"
    from common.models.checkpoint import data_version

    (tmp_path / "card.json").write_text(json.dumps({"name": "old"}))
    assert data_version(tmp_path) == 1  # cards from before versions existed
    (tmp_path / "card.json").write_text(json.dumps({"data": {"version": 2}}))
    assert data_version(tmp_path) == 2
    with pytest.raises(FileNotFoundError, match="card.json"):
        data_version(tmp_path / "missing")
    assert data_version(TOY_CHECKPOINT_V1) == 1
    from common.models.toy_train import ToyTrainConfig

    assert data_version(TOY_CHECKPOINT) == ToyTrainConfig().data_version  # `make toy-model` reproduces it
