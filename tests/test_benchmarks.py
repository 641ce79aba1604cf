"""common.data.benchmarks on tiny fixture files written in each benchmark's real LLaVA-eval format."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from common.data.benchmarks import BENCHMARKS, iter_benchmark, load_benchmark
from tests.paper_fixtures import (
    BENCHMARK_WRITERS as WRITERS,
    LETTER,
    MMB_HEADER,
    SA,
    b64_png,
    write_gqa,
    write_json,
    write_jsonl,
    write_mmb,
    write_mme,
    write_pope,
    write_sqa,
    write_textvqa,
    write_vqav2,
)

# ----------------------------------------------------------------------------------------------------
# Happy paths
# ----------------------------------------------------------------------------------------------------


def test_registry_covers_every_family():
    assert sorted(BENCHMARKS) == sorted(WRITERS) == ["gqa", "mmb", "mme", "pope", "sqa", "textvqa", "vqav2"]


@pytest.mark.filterwarnings("ignore:VQAv2 test-dev")
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_loader_yields_valid_samples(tmp_path, name):
    WRITERS[name](tmp_path)
    samples = load_benchmark(name, tmp_path)
    assert samples
    assert len({s.id for s in samples}) == len(samples)
    for s in samples:
        assert s.family == name and s.id.startswith(f"{name}/")
        assert all(isinstance(im, Image.Image) for im in s.images)
        assert s.images[0].convert("RGB").size[0] > 0  # decodes
        assert "<image>" not in s.question
    assert len(load_benchmark(name, tmp_path, limit=1)) == 1
    assert load_benchmark(name, tmp_path, limit=0) == []


def test_pope(tmp_path):
    write_pope(tmp_path)
    s = load_benchmark("pope", tmp_path)
    assert [x.id for x in s] == ["pope/1", "pope/2", "pope/3", "pope/4"]
    assert [x.answer for x in s] == ["yes", "no", "yes", "no"]
    assert [x.meta["pope_split"] for x in s] == ["adversarial", "adversarial", "popular", "random"]
    assert all(x.answer_type == "yesno" and x.references == [x.answer] for x in s)
    assert s[0].question == f"Is there a snowboard in the image?\n{SA}"
    assert s[0].meta["raw_question"] == "Is there a snowboard in the image?"
    assert s[0].images[0] is s[1].images[0]  # one image object per file
    only = load_benchmark("pope", tmp_path, split="popular")
    assert [x.id for x in only] == ["pope/3"]


def test_textvqa_joins_like_eval_textvqa(tmp_path):
    write_textvqa(tmp_path)
    s = load_benchmark("textvqa", tmp_path)
    assert [x.id for x in s] == ["textvqa/34602", "textvqa/34603", "textvqa/34604"]
    assert s[0].answer_type == "exact" and len(s[0].references) == 10
    assert s[1].references.count("10 years") == 6 and s[1].answer == "10 years"
    assert "Reference OCR token:" in s[0].question and s[0].meta["raw_question"] == "What brand liquor is on the right?"
    assert s[2].references == ["22"] * 10


def test_textvqa_repeated_question_keeps_ids_unique(tmp_path):
    write_textvqa(tmp_path)
    q = tmp_path / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl"
    last = q.read_text().splitlines()[-1]
    q.write_text(q.read_text() + last + "\n")  # asked twice, annotated once
    s = load_benchmark("textvqa", tmp_path)
    assert [x.id for x in s][-2:] == ["textvqa/34604", "textvqa/34604#1"]
    assert s[-1].references == s[-2].references


def test_gqa(tmp_path):
    write_gqa(tmp_path)
    s = load_benchmark("gqa", tmp_path)
    assert [(x.id, x.answer, x.answer_type) for x in s] == [("gqa/201307251", "no", "exact"), ("gqa/201640614", "woman", "exact")]
    assert s[1].meta["types"]["semantic"] == "rel" and s[0].references == ["no"]


def test_gqa_alternative_layout(tmp_path):
    write_gqa(tmp_path)
    base = tmp_path / "gqa"
    (base / "data" / "images").rename(base / "images")
    (base / "data" / "testdev_balanced_questions.json").rename(base / "testdev_balanced_questions.json")
    assert len(load_benchmark("gqa", tmp_path)) == 2


@pytest.mark.parametrize("with_jsonl", [True, False])
def test_mme(tmp_path, with_jsonl):
    write_mme(tmp_path, with_jsonl)
    s = load_benchmark("mme", tmp_path)
    by_q = {x.meta["raw_question"]: x for x in s}
    assert len(s) == 4 and len({x.id for x in s}) == 4
    assert by_q["Is a python code shown in the picture?"].answer == "yes"
    assert by_q["Is a c++ code shown in the picture?"].answer == "no"
    assert by_q["Does this artwork belong to the type of historical?"].answer == "no"  # two-space variant
    assert all(x.answer_type == "yesno" and x.question.endswith(SA) for x in s)
    pairs = {x.meta["pair_id"] for x in s}
    assert pairs == {"code_reasoning/0020.png", "artwork/images/14777.jpg"}
    assert {x.meta["mme_category"] for x in load_benchmark("mme", tmp_path, split="artwork")} == {"artwork"}
    if with_jsonl:
        assert [x.id for x in s[:2]] == ["mme/code_reasoning/0020.png#0", "mme/code_reasoning/0020.png#1"]


def test_mme_nested_release_folder(tmp_path):
    write_mme(tmp_path)
    data = tmp_path / "MME" / "MME_Benchmark_release_version"
    nested = tmp_path / "MME" / "MME_Benchmark"
    data.rename(nested)
    data.mkdir()
    nested.rename(data / "MME_Benchmark")
    assert len(load_benchmark("mme", tmp_path)) == 4


def test_sqa_img_only(tmp_path):
    write_sqa(tmp_path)
    s = load_benchmark("sqa", tmp_path)
    assert [x.id for x in s] == ["sqa/5", "sqa/11"]  # text-only "4" is not SQA-IMG
    x = s[1]
    assert x.answer == "B" and x.answer_type == "choice"
    assert x.choices == ["A. Maryland", "B. New Hampshire", "C. Rhode Island", "D. Vermont"]
    assert x.meta["options"][1] == "New Hampshire" and x.meta["subject"] == "social science"
    assert x.question == f"What is the name of the colony shown?\nA. Maryland\nB. New Hampshire\nC. Rhode Island\nD. Vermont\n{LETTER}"
    (tmp_path / "scienceqa" / "problems.json").unlink()  # optional
    assert [y.answer for y in load_benchmark("sqa", tmp_path)] == ["B", "B"]


def test_mmb(tmp_path):
    write_mmb(tmp_path)
    s = load_benchmark("mmb", tmp_path)
    assert [x.id for x in s] == ["mmb/241", "mmb/242"]
    assert s[0].choices == ["A. a cat", "B. a dog", "C. a car", "D. a tree"] and s[0].answer == "B"
    assert s[0].question == f"What is the main object?\nA. a cat\nB. a dog\nC. a car\nD. a tree\n{LETTER}"
    assert s[1].choices == ["A. spring", "B. summer", "C. winter"]  # D is nan: options stop there
    assert s[1].question.startswith("The photo was taken outdoors.\nWhich season is shown?\nA. spring")
    assert s[1].meta["category"] == "scene" and s[1].meta["l2-category"] == "coarse_perception"
    assert s[0].images[0].convert("RGB").getpixel((0, 0)) == (1, 2, 3)


def test_mmb_without_answers(tmp_path):
    header = [h for h in MMB_HEADER if h != "answer"]
    row = ["7", "Q?", "nan", "x", "y", "nan", "nan", "cat", b64_png((0, 0, 0)), "src", "l2", "nan", "test"]
    write_mmb(tmp_path, [row], header=header, name="mmbench_test_en_20231003")
    with pytest.warns(UserWarning, match="no `answer` column"):
        s = load_benchmark("mmb", tmp_path, split="mmbench_test_en_20231003")
    assert s[0].references == [] and s[0].meta["has_answer"] is False and s[0].choices == ["A. x", "B. y"]


def test_vqav2_has_no_references_and_says_so(tmp_path):
    write_vqav2(tmp_path)
    with pytest.warns(UserWarning, match="not public"):
        s = load_benchmark("vqav2", tmp_path)
    assert [x.id for x in s] == ["vqav2/262144000", "vqav2/262144001"]
    assert all(x.references == [] and x.answer == "" and x.meta["has_answer"] is False for x in s)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_gqa(tmp_path)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert len(load_benchmark("gqa", None)) == 2
    monkeypatch.delenv("DATA_ROOT")
    with pytest.raises(ValueError, match="DATA_ROOT"):
        load_benchmark("gqa")


def test_iter_is_lazy(tmp_path):
    write_pope(tmp_path)
    it = iter_benchmark("pope", tmp_path)
    assert next(it).id == "pope/1"


# ----------------------------------------------------------------------------------------------------
# Errors: a ValueError naming the file and the line
# ----------------------------------------------------------------------------------------------------


def test_unknown_name_split_and_root(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'coco'.*pope"):
        load_benchmark("coco", tmp_path)
    write_pope(tmp_path)
    with pytest.raises(ValueError, match="unknown split 'easy'"):
        load_benchmark("pope", tmp_path, split="easy")
    with pytest.raises(ValueError, match="not a directory"):
        load_benchmark("pope", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("pope", tmp_path, limit=-1)


def test_missing_image_names_file_and_line(tmp_path):
    write_gqa(tmp_path)
    (tmp_path / "gqa" / "data" / "images" / "n235859.jpg").unlink()
    with pytest.raises(ValueError, match=r"llava_gqa_testdev_balanced\.jsonl:2: image file not found: .*n235859\.jpg"):
        load_benchmark("gqa", tmp_path)


def test_missing_image_sqa_names_line(tmp_path):
    write_sqa(tmp_path)
    (tmp_path / "scienceqa" / "images" / "test" / "11" / "image.png").unlink()
    text = (tmp_path / "scienceqa" / "llava_test_CQM-A.json").read_text().splitlines()
    line = next(i for i, l in enumerate(text, 1) if '"id": "11"' in l) - 1  # the entry's "{" line
    with pytest.raises(ValueError, match=rf"llava_test_CQM-A\.json:{line}: image file not found"):
        load_benchmark("sqa", tmp_path)


# (benchmark, file under the data root, text replaced once, its replacement, the error it must raise)
EDITS = [
    pytest.param("pope", "pope/llava_pope_test.jsonl", '"popular"}', '"popula',
                 r"llava_pope_test\.jsonl:3: bad JSON line", id="pope-truncated-jsonl-line"),
    pytest.param("sqa", "scienceqa/llava_test_CQM-A.json", '"gpt",', '"gpt"',
                 r"llava_test_CQM-A\.json:\d+: bad JSON", id="sqa-bad-json-list"),
    pytest.param("mme", "MME/MME_Benchmark_release_version/code_reasoning/0020.txt", "\tNo", "\tPerhaps",
                 r"0020\.txt:2: unknown answer 'Perhaps'", id="mme-unknown-answer"),
    pytest.param("mme", "MME/llava_mme.jsonl", "type of religious", "type of baroque",
                 r"llava_mme\.jsonl:3: question .* not found", id="mme-question-without-answer"),
    pytest.param("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl", "player's jersey", "referee's shirt",
                 r"llava_textvqa_val_v051_ocr\.jsonl:3: no answer", id="textvqa-question-without-annotation"),
]


@pytest.mark.parametrize("name, rel_path, old, new, match", EDITS)
def test_edited_fixture_error_names_file_and_line(tmp_path, name, rel_path, old, new, match):
    """One writer for every "valid fixture, one text edit, a ValueError naming the file and line" case."""
    WRITERS[name](tmp_path)
    path = tmp_path / rel_path
    text = path.read_text()
    assert old in text, f"fixture {rel_path} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=match):
        load_benchmark(name, tmp_path)


def test_unknown_yesno_answer_pope(tmp_path):
    write_pope(tmp_path)
    write_jsonl(tmp_path / "pope" / "coco" / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "q", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "q", "label": "maybe"},
    ])
    with pytest.raises(ValueError, match=r"coco_pope_adversarial\.json:2: unknown answer 'maybe'"):
        load_benchmark("pope", tmp_path)


def test_pope_label_mismatch_and_shortage(tmp_path):
    write_pope(tmp_path)
    write_jsonl(tmp_path / "pope" / "coco" / "coco_pope_popular.json", [
        {"question_id": 1, "image": "COCO_val2014_000000999999.jpg", "text": "q", "label": "yes"}])
    with pytest.raises(ValueError, match=r"llava_pope_test\.jsonl:3: image .* differs"):
        load_benchmark("pope", tmp_path)
    write_jsonl(tmp_path / "pope" / "coco" / "coco_pope_popular.json", [])
    with pytest.raises(ValueError, match=r"llava_pope_test\.jsonl:3: .* has no label"):
        load_benchmark("pope", tmp_path)


def test_unknown_choice_answer_sqa_and_problems_mismatch(tmp_path):
    write_sqa(tmp_path)
    q = tmp_path / "scienceqa" / "llava_test_CQM-A.json"
    entries = json.loads(q.read_text())
    entries[2]["conversations"][1]["value"] = "F"
    write_json(q, entries)
    with pytest.raises(ValueError, match=r"llava_test_CQM-A\.json:\d+: id '11': unknown answer 'F'"):
        load_benchmark("sqa", tmp_path)
    entries[2]["conversations"][1]["value"] = "C"  # a valid letter, but problems.json says index 1
    write_json(q, entries)
    with pytest.raises(ValueError, match=r"id '11': options/answer disagree"):
        load_benchmark("sqa", tmp_path)


def test_unknown_choice_answer_mmb_and_bad_image(tmp_path):
    row = ["1", "Q?", "nan", "x", "y", "nan", "nan", "E", "cat", b64_png((0, 0, 0)), "s", "l2", "nan", "dev"]
    write_mmb(tmp_path, [row])
    with pytest.raises(ValueError, match=r"mmbench_dev_20230712\.tsv:2: unknown answer 'E'"):
        load_benchmark("mmb", tmp_path)
    row[7], row[9] = "A", "not base64!"
    write_mmb(tmp_path, [row, row])
    with pytest.raises(ValueError, match=r"mmbench_dev_20230712\.tsv:2: image column is not valid base64"):
        load_benchmark("mmb", tmp_path)


def test_missing_question_file(tmp_path):
    with pytest.raises(ValueError, match=r"llava_vqav2_mscoco_test-dev2015\.jsonl: file not found"):
        with pytest.warns(UserWarning):
            load_benchmark("vqav2", tmp_path)
