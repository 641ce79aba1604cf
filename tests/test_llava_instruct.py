"""common.data.llava_instruct on LLaVA-1.5 training-data fixtures written in the release layouts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import common.data.llava_instruct as L
from tests.paper_fixtures import INSTRUCT_SOURCES, SA, write_json, write_llava_instruct, write_llava_pretrain


def test_pretrain_layout_and_turns(tmp_path):
    write_llava_pretrain(tmp_path, n=8)
    assert L.pretrain_path(tmp_path) == tmp_path / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"
    convs = L.load_pretrain(tmp_path)
    assert len(convs) == 8 and len({c.id for c in convs}) == 8
    first, second = convs[0], convs[1]
    assert first.id == "000000012" and first.image == tmp_path / "LLaVA-Pretrain/images/00000/000000012.jpg"
    # "<image>\n" before the instruction (entry 0) or "\n<image>" after it (entry 1): both stripped
    assert first.turns == [("Describe the image concisely.", "a red car parked on the street")]
    assert second.turns[0][0] == "Provide a brief description of the given image."
    assert all(c.image_turn == 0 and len(c.turns) == 1 and "<image>" not in c.turns[0][0] for c in convs)


def test_instruct_sources_multi_turn_and_text_only(tmp_path):
    write_llava_instruct(tmp_path, n=8)
    assert L.instruct_path(tmp_path) == tmp_path / "llava_v1_5_mix665k.json"
    convs = L.load_instruct(tmp_path)
    assert len(convs) == 8
    kinds = [INSTRUCT_SOURCES[k % len(INSTRUCT_SOURCES)] for k in range(8)]
    text_only = [c for c, k in zip(convs, kinds) if k == "text"]
    assert len(text_only) == 2 and all(c.image is None and c.image_turn is None for c in text_only)
    coco = convs[0]
    assert coco.image == tmp_path / "coco/train2017/000000033471.jpg"
    assert coco.turns == [("What are the colors of the bus in the image?", "The bus in the image is white and red."),
                          ("What feature can be seen on the back of the bus?",
                           "The back of the bus features an advertisement.")]
    gqa = convs[kinds.index("gqa")]
    assert gqa.turns[0] == (f"Is the sky dark?\n{SA}", "Yes") and gqa.image.parent == tmp_path / "gqa/images"
    folders = {c.image.relative_to(tmp_path).parts[0] for c in convs if c.image is not None}
    assert folders == {"coco", "gqa", "ocr_vqa", "textvqa", "vg"}


def test_limit_and_require_image(tmp_path):
    write_llava_instruct(tmp_path, n=8)
    assert [c.id for c in L.load_instruct(tmp_path, limit=2)] == [c.id for c in L.load_instruct(tmp_path)[:2]]
    with_images = L.load_instruct(tmp_path, require_image=True)
    assert len(with_images) == 6 and all(c.image is not None for c in with_images)
    assert len(L.load_instruct(tmp_path, limit=3, require_image=True)) == 3
    assert L.load_instruct(tmp_path, limit=0) == []
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            L.load_instruct(tmp_path, limit=bad)


def test_limit_stops_reading(tmp_path):
    """Entries after the limit are not parsed: a broken tail does not matter (a 665k-entry file is big)."""
    path = write_llava_instruct(tmp_path, n=4)
    path.write_text(path.read_text().rstrip().rstrip("]") + ", {broken")
    assert len(L.load_instruct(tmp_path, limit=4)) == 4
    with pytest.raises(ValueError, match=r"bad JSON .*\(entry 4\)"):
        L.load_instruct(tmp_path)


def test_images_are_opened_only_on_access(tmp_path, monkeypatch):
    write_llava_instruct(tmp_path, n=6)
    opened: list[Path] = []
    real_open = Image.open
    monkeypatch.setattr(L.Image, "open", lambda fp, *a, **k: opened.append(Path(fp)) or real_open(fp, *a, **k))
    convs = L.load_instruct(tmp_path)
    assert opened == []
    im = convs[0].load_image()
    assert opened == [convs[0].image] and im.mode == "RGB" and im.size[0] > 0
    with pytest.raises(ValueError, match="text-only"):
        convs[1].load_image()


def test_conversations_from_explicit_paths(tmp_path):
    path = write_llava_pretrain(tmp_path, n=3)
    convs = L.load_conversations(path, path.parent / "images")
    assert [c.image.name for c in convs] == ["000000012.jpg", "000004549.jpg", "000009086.jpg"]
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: file not found"):
        L.load_conversations(tmp_path / "nowhere.json", tmp_path)


def test_missing_release_files_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        L.pretrain_path(tmp_path)
    msg = str(e.value)
    assert f"expected {tmp_path}/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json" in msg
    assert "stage-1" in msg and f"{tmp_path}/LLaVA-Pretrain/images/" in msg
    with pytest.raises(FileNotFoundError, match=r"expected .*/llava_v1_5_mix665k\.json \(LLaVA-1\.5 stage-2 data, "
                                                r"images under .*coco/train2017/"):
        L.load_instruct(tmp_path)


def _edit_entries(path: Path, edit) -> None:
    entries = json.loads(path.read_text())
    edit(entries)
    write_json(path, entries)


def _turn(entries, k, t, **fields):
    entries[k]["conversations"][t].update(fields)


# (what is broken, the edit of the entry list, the message after "<file>:<line>: entry <k> (id ...): ")
EDITS = [
    pytest.param(lambda e: e[2].pop("conversations"), r"entry 2 \(id '2354788'\): missing `conversations`",
                 id="no-conversations"),
    pytest.param(lambda e: e[2].update(conversations=[]), r"entry 2 .*non-empty list", id="empty-conversations"),
    pytest.param(lambda e: _turn(e, 0, 1, **{"from": "human"}),
                 r"entry 0 .*turn 1 is from 'human', expected 'gpt' \(turns alternate", id="two-human-turns"),
    pytest.param(lambda e: _turn(e, 1, 0, **{"from": "gpt"}), r"entry 1 .*turn 0 is from 'gpt', expected 'human'",
                 id="starts-with-gpt"),
    pytest.param(lambda e: e[3]["conversations"].pop(), r"entry 3 .*last turn is from 'human'", id="odd-turns"),
    pytest.param(lambda e: _turn(e, 0, 1, value=5), r"entry 0 .*turn 1 must be an object with a string `value`",
                 id="non-string-value"),
    pytest.param(lambda e: _turn(e, 0, 1, value="<image>\nwhite"), r"entry 0 .*<image> must appear once",
                 id="marker-in-gpt-turn"),
    pytest.param(lambda e: _turn(e, 0, 2, value="<image>\nAnd?"), r"entry 0 .*<image> must appear once",
                 id="two-markers"),
    pytest.param(lambda e: _turn(e, 0, 0, value="What colour?"), r"entry 0 .*names an image but no human turn",
                 id="image-without-marker"),
    pytest.param(lambda e: _turn(e, 1, 0, value="<image>\nHi"), r"entry 1 .*has <image> but no `image`",
                 id="marker-without-image"),
    pytest.param(lambda e: e[4].pop("id"), r"entry 4: missing `id`", id="no-id"),
]


@pytest.mark.parametrize("edit, match", EDITS)
def test_data_errors_name_file_line_and_entry(tmp_path, edit, match):
    path = write_llava_instruct(tmp_path, n=6)
    _edit_entries(path, edit)
    with pytest.raises(ValueError, match=r"llava_v1_5_mix665k\.json:\d+: " + match):
        L.load_instruct(tmp_path)


def test_missing_image_file_names_entry(tmp_path):
    path = write_llava_instruct(tmp_path, n=6)
    (tmp_path / "gqa/images/2354788.jpg").unlink()
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if '"id": "2354788"' in l) - 1
    with pytest.raises(ValueError, match=rf"llava_v1_5_mix665k\.json:{line}: entry 2 \(id '2354788'\): "
                                         r"image file not found: .*gqa/images/2354788\.jpg"):
        L.load_instruct(tmp_path)


def test_bad_json_names_file_and_entry(tmp_path):
    path = write_llava_pretrain(tmp_path, n=3)
    text = path.read_text()
    path.write_text(text.replace('"from": "gpt",', '"from": "gpt"', 2))  # entries 0 and 1 lose a comma
    with pytest.raises(ValueError, match=r"blip_laion_cc_sbu_558k\.json:\d+: bad JSON .*\(entry 0\)"):
        L.load_pretrain(tmp_path)
    path.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=r"blip_laion_cc_sbu_558k\.json:1: expected a JSON list"):
        L.load_pretrain(tmp_path)
