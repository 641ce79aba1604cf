"""ToyWorld: a procedural benchmark suite whose families mirror the papers' benchmarks (DESIGN.md §5).

Every sample is a fresh scene (coloured shapes and digit tiles on a `grid` x `grid` lattice of 8 px
cells, see `toyworld_render`) plus one question. Families (`Sample.family`):

| family  | mirrors        | example question                                   | answer      |
|---------|----------------|----------------------------------------------------|-------------|
| gqa     | GQA            | what color is the triangle ?  / is the red circle left or right of the blue cross ? | red / left |
| pope    | POPE           | is there a green diamond in the image ?  (random / popular / adversarial negatives) | yes / no |
| textvqa | TextVQA        | what number is on the cyan tile ?                   | 7           |
| count   | fine-grained   | how many circles are there ?                        | 3           |
| scene   | coarse-grained | what color is the background ?                      | gray        |
| mc      | SQA / MMB      | what shape is the pink object ? options : A circle , B cross , ... | B |
| caption | COCO / NoCaps  | describe the image .                                | a small red circle , ... on a gray background . |
| video   | video QA       | (3 frames) which shape moved ?                      | diamond     |

Answers are one word except captions. Every question can be rephrased (several templates); samples
asking the same thing about the same scene share `meta["rephrase_group"]` (ConBench-like consistency).

Data versions (`version=`; a toy checkpoint's card records the one it was trained on as `data.version`,
and it is evaluated on that one, `common.models.checkpoint.data_version`):
- 1 (default; `toy-llava-v1`, used by ATP and STF): gqa's spatial questions compare two objects ("is the
  red circle left or right of the blue cross ?"), and mc answers with the option's letter. Toy models v1-v3
  left both at chance (relations 44-48%, mc 22-33% over three training recipes).
- 2 (`make toy-model`'s default; the committed `toy-llava`, v6, and v5 before it): gqa's spatial
  questions ask which half of the image one object is in ("is the red circle on the left or the right
  of the image ?", GQA's own "which side" questions), and mc answers with the option's text ("... options :
  circle , cross , diamond , square . answer with one of the options ." -> "cross"); the options still
  restrict the answer to four.
  Every other family is drawn identically. On v6 (checkpoints/README.md): mc 97% on val (as accurate as
  the lookup it needs), half-image questions 40-65% (not learned, although position is readable).

Determinism and splits: sample `i` of split `s` with seed `k` is drawn from `random.Random("k:s:i")`.
A scene belongs to exactly one split, chosen by a hash of its canonical description
(train 80% / val 10% / test 10%); the generator redraws scenes that hash to another split, so no
scene (image, or clip) can appear in two splits.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Callable, Iterator, Sequence

from common.data.sample import Sample
from common.data.toyworld_render import (
    BACKGROUNDS, COLORS, DIGITS, PLAIN_SHAPES, PLURALS, SHAPES, SIZES, Obj, Scene, fits, free_cells,
    render, stable_hash,
)

FAMILIES: tuple[str, ...] = ("gqa", "pope", "textvqa", "count", "scene", "mc", "caption", "video")
QA_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f != "caption")
SPLITS: tuple[str, ...] = ("train", "val", "test")
POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
DATA_VERSIONS: tuple[int, ...] = (1, 2)
DATA_VERSION = 1  # the default question design (module docstring)
CELL = 8  # px per cell = the toy model's patch size

# A skewed prior over colours and shapes, so that "popular" objects exist (POPE's popular negatives are
# the most frequent objects of the training distribution that are absent from the image).
_COLOR_W = {c: w for c, w in zip(COLORS, (8, 7, 6, 5, 4, 3, 3, 2))}
_SHAPE_W = {s: w for s, w in zip(PLAIN_SHAPES, (6, 5, 4, 3, 2))}
POPULAR_OBJECTS: tuple[str, ...] = tuple(
    f"{c} {s}" for c, s in sorted(
        ((c, s) for c in COLORS for s in PLAIN_SHAPES), key=lambda cs: -_COLOR_W[cs[0]] * _SHAPE_W[cs[1]]
    )
)

# Question templates; {x} placeholders. Index 0 is the canonical phrasing.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "color_of": ("what color is the {shape} ?", "which color does the {shape} have ?", "the {shape} is what color ?"),
    "shape_of": ("what shape is the {color} object ?", "which shape is {color} ?", "the {color} object is what shape ?"),
    "size_of": ("what size is the {obj} ?", "is the {obj} small or large ?", "how big is the {obj} ?"),
    "rel_lr": ("is the {a} left or right of the {b} ?", "is the {a} on the left or the right of the {b} ?"),
    "rel_ab": ("is the {a} above or below the {b} ?", "is the {a} higher or lower than the {b} ?"),
    "side_lr": ("is the {obj} on the left or the right of the image ?", "which side of the image is the {obj} on ?",
                "is the {obj} in the left or the right half of the image ?"),
    "side_tb": ("is the {obj} at the top or the bottom of the image ?", "is the {obj} in the top or the bottom half "
                "of the image ?", "which part of the image is the {obj} in , top or bottom ?"),
    "exist": ("is there a {obj} in the image ?", "does the image contain a {obj} ?", "can you see a {obj} ?"),
    "read": ("what number is on the {color} tile ?", "which digit is written on the {color} tile ?",
             "read the number on the {color} tile ."),
    "count_shape": ("how many {shapes} are there ?", "count the {shapes} .", "what is the number of {shapes} ?"),
    "count_color": ("how many {color} objects are there ?", "count the {color} objects .",
                    "what is the number of {color} objects ?"),
    "count_all": ("how many objects are there ?", "count the objects .", "what is the number of objects ?"),
    "background": ("what color is the background ?", "which color is the background ?",
                   "the background is what color ?"),
    "caption": ("describe the image .", "what is in the image ?", "give a short description of the image ."),
    "moved": ("which shape moved ?", "what shape is moving ?", "which shape changes position ?"),
    "moved_color": ("what color is the object that moved ?", "what color is the moving object ?",
                    "which color is the object that changes position ?"),
    "appeared": ("which shape appeared ?", "what shape shows up ?", "which shape is new in the last frame ?"),
    "appeared_color": ("what color is the object that appeared ?", "what color is the new object ?",
                       "which color shows up ?"),
    # Training-only "lookup lists" (dialogue turns, never in a benchmark): see `_ask_lookup`.
    "list_color": ("what color is each shape ?",),
    "list_shape": ("what shape is each color ?",),
    "list_digit": ("what number is on each tile ?",),
}
MC_SUFFIX = "options : {opts} . answer with the letter ."  # data version 1
MC_TEXT_SUFFIX = "options : {opts} . answer with one of the options ."  # data version 2
TRAIN_ONLY_FAMILIES: tuple[str, ...] = ("lookup",)


# ---------------------------------------------------------------- scenes

def _weighted(rng: random.Random, weights: dict[str, int], exclude: Sequence[str] = ()) -> str:
    keys = [k for k in weights if k not in exclude]
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _place(rng: random.Random, scene: Scene, size: str) -> tuple[int, int] | None:
    span = 2 if size == "large" else 1
    free = free_cells(scene)
    spots = sorted(
        (r, c) for r, c in free
        if r + span <= scene.grid and c + span <= scene.grid
        and all((r + i, c + j) in free for i in range(span) for j in range(span))
    )
    return rng.choice(spots) if spots else None


def add_object(rng: random.Random, scene: Scene, shape: str | None = None, color: str | None = None,
               size: str | None = None, tile_p: float = 0.15) -> tuple[Scene, Obj | None]:
    """Add one object with a colour-shape pair not yet in the scene (None if no room or no pair left)."""
    used = {(o.color, o.shape) for o in scene.objects}
    for _ in range(50):
        sh = shape or ("tile" if rng.random() < tile_p else _weighted(rng, _SHAPE_W))
        co = color or _weighted(rng, _COLOR_W)
        if (co, sh) not in used:
            break
    else:
        return scene, None
    sz = size or ("large" if rng.random() < 0.35 else "small")
    spot = _place(rng, scene, sz)
    if spot is None:
        return scene, None
    digit = rng.choice(DIGITS) if sh == "tile" else None
    obj = Obj(sh, co, sz, spot[0], spot[1], digit)
    return replace(scene, objects=scene.objects + (obj,)), obj


def random_scene(rng: random.Random, grid: int, n_min: int = 3, n_max: int = 6, tile_p: float = 0.15) -> Scene:
    scene = Scene(grid, rng.choice(sorted(BACKGROUNDS)))
    for _ in range(rng.randint(n_min, n_max)):
        scene, _ = add_object(rng, scene, tile_p=tile_p)
    return scene


def repeat_scene(rng: random.Random, grid: int) -> Scene:
    """A scene where 2-4 objects share one colour (with distinct shapes) or one shape (with distinct
    colours), plus 1-3 others. Random scenes rarely repeat an attribute (8 colours, 5 shapes), so training
    dialogues on them almost never ask to count a subset of 2 or more, or to tell "red square" from the
    red circle and red triangle next to it: the filter-then-aggregate questions v5 failed."""
    scene = Scene(grid, rng.choice(sorted(BACKGROUNDS)))
    if rng.random() < 0.5:
        color = _weighted(rng, _COLOR_W)
        for sh in rng.sample(list(SHAPES), rng.randint(2, 4)):
            scene, _ = add_object(rng, scene, shape=sh, color=color)
    else:
        shape = _weighted(rng, _SHAPE_W)
        for co in rng.sample(list(COLORS), rng.randint(2, 4)):
            scene, _ = add_object(rng, scene, shape=shape, color=co)
    for _ in range(rng.randint(1, 3)):
        scene, _ = add_object(rng, scene, tile_p=0.25)
    return scene


def scene_split(key: str) -> str:
    """The split a scene belongs to: 80/10/10 by a stable hash of its canonical description."""
    h = stable_hash(key) % 10
    return "train" if h < 8 else ("val" if h == 8 else "test")


# ---------------------------------------------------------------- question builders
# Each `_q_<family>` builder takes (rng, grid, sample index, data version) and returns a `_Q`, or None to
# ask the caller to redraw; the `_ask_*` helpers ask about a given scene (benchmark samples and dialogues).

class _Q:
    """An unrendered question: frames (scenes), the template kind + args, answer, and extras."""

    def __init__(self, frames: list[Scene], kind: str, args: dict, answer: str, answer_type: str = "exact",
                 choices: list[str] | None = None, references: list[str] | None = None, meta: dict | None = None,
                 suffix: str = ""):
        self.frames, self.kind, self.args, self.answer = frames, kind, args, answer
        self.answer_type, self.choices, self.references = answer_type, choices, references
        self.meta, self.suffix = meta or {}, suffix

    def key(self) -> str:
        return "||".join(f.key() for f in self.frames)

    def text(self, template: int) -> str:
        """The question as shown to the model: template `template` of its kind, filled, plus any suffix."""
        question = TEMPLATES[self.kind][template].format(**self.args)
        return f"{question} {self.suffix}" if self.suffix else question


def _unique(scene: Scene, attr: str) -> list[Obj]:
    counts = Counter(getattr(o, attr) for o in scene.objects)
    return [o for o in scene.objects if counts[getattr(o, attr)] == 1]


def _q_gqa(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    return _ask_gqa(rng, random_scene(rng, grid), version)


def _ask_gqa(rng: random.Random, scene: Scene, version: int) -> _Q | None:
    """An attribute or spatial question about `scene` (None if it has no suitable object); spatial
    questions compare two objects in data version 1 and place one object in the image in version 2."""
    kind = rng.choices(["color_of", "shape_of", "size_of", "rel"], weights=[3, 3, 1, 3])[0]
    if kind == "color_of":
        cands = [o for o in _unique(scene, "shape")]
        if not cands:
            return None
        o = rng.choice(cands)
        return _Q([scene], kind, {"shape": o.shape}, o.color, meta={"qtype": "attribute"})
    if kind == "shape_of":
        cands = [o for o in _unique(scene, "color")]
        if not cands:
            return None
        o = rng.choice(cands)
        return _Q([scene], kind, {"color": o.color}, o.shape, meta={"qtype": "attribute"})
    if kind == "size_of":
        o = rng.choice(scene.objects)
        return _Q([scene], kind, {"obj": o.name()}, o.size, meta={"qtype": "attribute"})
    if version >= 2:
        return _ask_side(rng, scene)
    if len(scene.objects) < 2:
        return None
    a, b = rng.sample(list(scene.objects), 2)
    return _ask_axis(rng, scene, a.center, b.center, ("rel_lr", "rel_ab"), {"a": a.name(), "b": b.name()})


def _ask_side(rng: random.Random, scene: Scene) -> _Q | None:
    """Which half of the image an object is in (data version 2)."""
    o = rng.choice(scene.objects)
    mid = scene.grid / 2
    return _ask_axis(rng, scene, o.center, (mid, mid), ("side_lr", "side_tb"), {"obj": o.name()})


_AXIS_ANSWERS = {"rel_lr": ("left", "right"), "rel_ab": ("above", "below"),
                 "side_lr": ("left", "right"), "side_tb": ("top", "bottom")}


def _ask_axis(rng: random.Random, scene: Scene, pos: tuple[float, float], ref: tuple[float, float],
              kinds: tuple[str, str], args: dict) -> _Q | None:
    """A spatial question of `kinds` = (horizontal, vertical) about centre `pos` against `ref` (row, col),
    asked only along an axis where they are at least a cell apart, so the answer is never ambiguous from
    the pixels (None if neither is)."""
    axes = ((kinds[0], pos[1], ref[1]), (kinds[1], pos[0], ref[0]))
    opts = [(kind, _AXIS_ANSWERS[kind][p > q]) for kind, p, q in axes if abs(p - q) >= 1]
    if not opts:
        return None
    kind, answer = rng.choice(opts)
    return _Q([scene], kind, args, answer, meta={"qtype": "relation"})


def _q_pope(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    # Balanced by index: even -> yes, odd -> no; the negative-sampling split cycles with the index.
    scene = random_scene(rng, grid)
    return _ask_pope(rng, scene, i % 2 == 0, POPE_SPLITS[(i // 2) % 3])


def _ask_pope(rng: random.Random, scene: Scene, positive: bool, pope_split: str) -> _Q | None:
    """An existence question about `scene`: a present object, or an absent one drawn as `pope_split` says."""
    present = {o.name() for o in scene.objects}
    if positive:
        o = rng.choice(scene.objects)
        return _Q([scene], "exist", {"obj": o.name()}, "yes", "yesno", meta={"pope_split": pope_split})
    if pope_split == "random":
        absent = [f"{c} {s}" for c in COLORS for s in PLAIN_SHAPES if f"{c} {s}" not in present]
        name = rng.choice(absent)
    elif pope_split == "popular":
        name = next(n for n in POPULAR_OBJECTS if n not in present)
    else:  # adversarial: shares the colour or the shape of a present object (the "co-occurring" analogue)
        cands = sorted({f"{o.color} {s}" for o in scene.objects for s in PLAIN_SHAPES}
                       | {f"{c} {o.shape}" for o in scene.objects for c in COLORS if o.shape != "tile"})
        cands = [n for n in cands if n not in present]
        if not cands:
            return None
        name = rng.choice(cands)
    return _Q([scene], "exist", {"obj": name}, "no", "yesno", meta={"pope_split": pope_split})


def _tile_scene(rng: random.Random, grid: int) -> tuple[Scene, list[Obj]]:
    scene = Scene(grid, rng.choice(sorted(BACKGROUNDS)))
    for _ in range(rng.randint(1, 3)):
        scene, _ = add_object(rng, scene, shape="tile")
    for _ in range(rng.randint(1, 4)):
        scene, _ = add_object(rng, scene, tile_p=0.0)
    return scene, [o for o in scene.objects if o.shape == "tile"]


def _q_textvqa(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    scene, _ = _tile_scene(rng, grid)
    return _ask_read(rng, scene)


def _ask_read(rng: random.Random, scene: Scene) -> _Q | None:
    """Read the digit of one tile of `scene` (None if it has no tile)."""
    tiles = [o for o in scene.objects if o.shape == "tile"]
    if not tiles:
        return None
    o = rng.choice(tiles)
    return _Q([scene], "read", {"color": o.color}, o.digit, "number")


def _q_count(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    # The target count is drawn first (uniform), so the answer prior is flat and a blind model can't guess.
    kind = rng.choices(["count_shape", "count_color", "count_all"], weights=[2, 2, 1])[0]
    scene = Scene(grid, rng.choice(sorted(BACKGROUNDS)))
    if kind == "count_all":
        k = rng.randint(1, 6)
        for _ in range(k):
            scene, o = add_object(rng, scene, tile_p=0.1)
            if o is None:
                return None
        return _Q([scene], kind, {}, str(k), "number", meta={"qtype": kind})
    k = rng.randint(0, 4)
    if kind == "count_shape":
        shape = rng.choice(PLAIN_SHAPES)
        for co in rng.sample(list(COLORS), k):
            scene, o = add_object(rng, scene, shape=shape, color=co)
            if o is None:
                return None
        for _ in range(rng.randint(1, 4)):
            scene, _ = add_object(rng, scene, shape=rng.choice([s for s in SHAPES if s != shape]))
        n = sum(o.shape == shape for o in scene.objects)
        return _Q([scene], kind, {"shapes": PLURALS[shape]}, str(n), "number", meta={"qtype": kind})
    color = rng.choice(list(COLORS))
    for sh in rng.sample(list(SHAPES), k):
        scene, o = add_object(rng, scene, shape=sh, color=color)
        if o is None:
            return None
    for _ in range(rng.randint(1, 4)):
        scene, _ = add_object(rng, scene, color=rng.choice([c for c in COLORS if c != color]))
    n = sum(o.color == color for o in scene.objects)
    return _Q([scene], kind, {"color": color}, str(n), "number", meta={"qtype": kind})


def _q_scene(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    return _ask_any(rng, random_scene(rng, grid), "scene", version)


def _q_mc(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    kind = rng.choice(["color_of", "shape_of", "read"])
    scene = _tile_scene(rng, grid)[0] if kind == "read" else random_scene(rng, grid)
    return _ask_mc(rng, scene, kind, version)


def _ask_mc(rng: random.Random, scene: Scene, kind: str, version: int) -> _Q | None:
    """A four-option version of a `kind` ("color_of", "shape_of", "read") question about `scene`,
    answered with the option's letter (data version 1) or its text (version 2)."""
    if kind == "read":
        tiles = [o for o in scene.objects if o.shape == "tile"]
        if not tiles:
            return None
        o = rng.choice(tiles)
        args, ans, pool = {"color": o.color}, o.digit, DIGITS
    else:
        cands = _unique(scene, "shape" if kind == "color_of" else "color")
        if not cands:
            return None
        o = rng.choice(cands)
        if kind == "color_of":
            args, ans, pool = {"shape": o.shape}, o.color, tuple(COLORS)
        else:
            args, ans, pool = {"color": o.color}, o.shape, SHAPES
    opts = rng.sample([p for p in pool if p != ans], 3)
    pos = rng.randrange(4)
    opts.insert(pos, ans)
    if version >= 2:
        return _Q([scene], kind, args, ans, "choice", choices=list(opts), meta={"options": opts, "answer_text": ans},
                  suffix=MC_TEXT_SUFFIX.format(opts=" , ".join(opts)))
    opt_text = " , ".join(f"{L} {v}" for L, v in zip(LETTERS, opts))
    return _Q([scene], kind, args, LETTERS[pos], "choice", choices=list(LETTERS),
              meta={"options": opts, "answer_text": ans}, suffix=MC_SUFFIX.format(opts=opt_text))


def _obj_phrase(o: Obj, with_size: bool = True) -> str:
    base = f"{o.size} {o.color} {o.shape}" if with_size else f"{o.color} {o.shape}"
    return f"a {base} showing {o.digit}" if o.shape == "tile" else f"a {base}"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_of(scene: Scene) -> list[str]:
    """Reference captions: left-to-right (canonical), top-to-bottom, and without sizes.

    The object list comes first (every word depends on the image); the tail "on a ... background ." is
    mostly a template continuation, as DyRate's generation study wants (dyrate.md §12).
    """
    lr = sorted(scene.objects, key=lambda o: (o.col, o.row))
    tb = sorted(scene.objects, key=lambda o: (o.row, o.col))
    tail = f" on a {scene.background} background ."
    return [
        _join([_obj_phrase(o) for o in lr]) + tail,
        _join([_obj_phrase(o) for o in tb]) + tail,
        _join([_obj_phrase(o, with_size=False) for o in lr]) + tail,
    ]


def _q_caption(rng: random.Random, grid: int, i: int, version: int) -> _Q | None:
    return _ask_any(rng, random_scene(rng, grid, 2, 5), "caption", version)


def _q_video(rng: random.Random, grid: int, i: int, frames: int = 3) -> _Q | None:
    scene = random_scene(rng, grid, 2, 4, tile_p=0.0)
    event = rng.choice(["moved", "appeared"])
    if event == "moved":
        o = rng.choice(scene.objects)
        dr, dc = rng.choice([(0, 2), (0, -2), (2, 0), (-2, 0)])
        seq, cur = [scene], o
        for _ in range(frames - 1):
            nxt = replace(cur, row=cur.row + dr, col=cur.col + dc)
            prev = seq[-1]
            if not fits(prev, nxt.size, nxt.row, nxt.col, ignore=cur):
                return None
            seq.append(replace(prev, objects=tuple(nxt if x == cur else x for x in prev.objects)))
            cur = nxt
    else:
        full, o = add_object(rng, scene, tile_p=0.0)
        if o is None:
            return None
        seq = [scene] + [full] * (frames - 1)
    ask_color = rng.random() < 0.5
    kind = f"{event}_color" if ask_color else event
    return _Q(seq, kind, {}, o.color if ask_color else o.shape, meta={"event": event, "frames": frames})


_BUILDERS: dict[str, Callable[..., _Q | None]] = {
    "gqa": _q_gqa, "pope": _q_pope, "textvqa": _q_textvqa, "count": _q_count,
    "scene": _q_scene, "mc": _q_mc, "caption": _q_caption, "video": _q_video,
}


def _ask_count(rng: random.Random, scene: Scene, favour_repeats: bool = False) -> _Q:
    """A counting question about a given `scene` (training dialogues; the benchmark's `_q_count` instead
    draws the count first so that its answer prior is flat). Half the time it names something present;
    with `favour_repeats`, three times in four, weighting each present value by its count squared (so a
    colour shared by three objects is asked about nine times as often as a colour seen once)."""
    kind = rng.choices(["count_shape", "count_color", "count_all"], weights=[2, 2, 1])[0]
    if kind == "count_all":
        return _Q([scene], kind, {}, str(len(scene.objects)), "number", meta={"qtype": kind})
    attr, pool = ("shape", PLAIN_SHAPES) if kind == "count_shape" else ("color", tuple(COLORS))
    present = sorted({getattr(o, attr) for o in scene.objects} & set(pool))
    if favour_repeats:
        counts = Counter(getattr(o, attr) for o in scene.objects)
        value = (rng.choices(present, weights=[counts[v] ** 2 for v in present])[0]
                 if present and rng.random() < 0.75 else rng.choice(pool))
    else:
        value = rng.choice(present) if present and rng.random() < 0.5 else rng.choice(pool)
    n = sum(getattr(o, attr) == value for o in scene.objects)
    args = {"shapes": PLURALS[value]} if attr == "shape" else {"color": value}
    return _Q([scene], kind, args, str(n), "number", meta={"qtype": kind})


def _ask_lookup(rng: random.Random, scene: Scene) -> _Q | None:
    """A training-only list of key -> value pairs, keys in vocabulary order (not spatial order):
    "what color is each shape ?" -> "circle red , triangle blue". After emitting a key word the model must
    find the patches that carry it and read another attribute there: the one-hop, content-keyed lookup
    that every gqa / textvqa / mc question needs as its second hop. Without it the toy model learned the
    two-hop questions only very slowly (ToyWorld's first design: gqa attribute questions at chance after
    3000 steps; the model card records the curve of the current recipe)."""
    kind = rng.choice(["list_color", "list_shape", "list_digit"])
    if kind == "list_digit":
        objs = [o for o in _unique(scene, "color") if o.shape == "tile"]
        pairs = sorted((tuple(COLORS).index(o.color), o.color, o.digit) for o in objs)
    elif kind == "list_color":
        objs = _unique(scene, "shape")
        pairs = sorted((SHAPES.index(o.shape), o.shape, o.color) for o in objs)
    else:
        objs = _unique(scene, "color")
        pairs = sorted((tuple(COLORS).index(o.color), o.color, o.shape) for o in objs)
    if not pairs:
        return None
    answer = " , ".join(f"{k} {v}" for _, k, v in pairs)
    return _Q([scene], kind, {}, answer, "caption")


def _ask_any(rng: random.Random, scene: Scene, family: str, version: int,
             pope_adversarial: float = 0.0, favour_repeats: bool = False) -> _Q | None:
    """A question of `family` about a given single-image `scene` (None if the scene can't support it).
    A POPE negative is adversarial with probability `pope_adversarial`, else of a uniformly drawn split;
    `favour_repeats` goes to `_ask_count`."""
    if family == "gqa":
        return _ask_gqa(rng, scene, version)
    if family == "pope":
        positive = rng.random() < 0.5
        if pope_adversarial > 0 and rng.random() < pope_adversarial:  # no draw at 0: v5's stream unchanged
            return _ask_pope(rng, scene, positive, "adversarial")
        return _ask_pope(rng, scene, positive, rng.choice(POPE_SPLITS))
    if family == "textvqa":
        return _ask_read(rng, scene)
    if family == "count":
        return _ask_count(rng, scene, favour_repeats)
    if family == "scene":
        return _Q([scene], "background", {}, scene.background)
    if family == "mc":
        return _ask_mc(rng, scene, rng.choice(["color_of", "shape_of", "read"]), version)
    if family == "caption":
        refs = caption_of(scene)
        return _Q([scene], "caption", {}, refs[0], "caption", references=refs)
    if family == "lookup":
        return _ask_lookup(rng, scene)
    raise ValueError(f"family {family!r} has no single-image dialogue questions")


def make_dialogue(split: str, seed: int, i: int, weights: dict[str, float], turns: int, grid: int = 12,
                  cell: int = CELL, version: int = DATA_VERSION, repeat_p: float = 0.0,
                  pope_adversarial: float = 0.0) -> list[Sample]:
    """`turns` questions about one fresh scene of `split` (a multi-turn conversation, as LLaVA's
    instruction data): the image's tokens are paid once and supervise every turn, which is what lets the
    toy model learn object lookup within the 90-minute training budget. Families are drawn with `weights`
    among those the scene supports (a scene without tiles asks no reading question), and no question is
    asked twice. Captions are better kept out of `weights`: a caption would answer the later turns.

    `repeat_p`: the share of scenes drawn by `repeat_scene` (an attribute shared by 2-4 objects); when it is
    not 0, counting turns also favour the values that repeat (`_ask_count`). `pope_adversarial`: the share
    of POPE negatives that are adversarial (`_ask_any`). Both 0 (the default) draw exactly the dialogues
    of toy model v5, which had neither."""
    _check(split, list(weights), grid, None, known=FAMILIES + TRAIN_ONLY_FAMILIES, version=version)
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    for name, p in (("repeat_p", repeat_p), ("pope_adversarial", pope_adversarial)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    rng = random.Random(f"toyworld-dialogue:{seed}:{split}:{i}")
    while True:  # the draw of the scene kind is skipped when repeat_p is 0, so v5's stream is unchanged
        if repeat_p > 0 and rng.random() < repeat_p:
            scene = repeat_scene(rng, grid)
        else:
            scene = random_scene(rng, grid, 2, 7, tile_p=0.25)
        if scene_split(scene.key()) == split:
            break
    image = render(scene, cell)
    fams, w = list(weights), list(weights.values())
    out: list[Sample] = []
    asked: set[tuple] = set()  # a question asked twice (say, as gqa then as mc) would answer itself
    for _ in range(50 * turns):
        if len(out) == turns:
            break
        family = rng.choices(fams, weights=w)[0]
        q = _ask_any(rng, scene, family, version, pope_adversarial, favour_repeats=repeat_p > 0)
        if q is None or (q.kind, *sorted(q.args.items())) in asked:
            continue
        asked.add((q.kind, *sorted(q.args.items())))
        t = rng.randrange(len(TEMPLATES[q.kind]))
        question = q.text(t)
        out.append(Sample(
            id=f"toyworld-dialogue-{split}-{seed}-{i}-{len(out)}", family=family, images=[image],
            question=question, answer=q.answer, answer_type=q.answer_type, choices=q.choices,
            references=list(q.references or [q.answer]),
            meta={**q.meta, "qkind": q.kind, "template": t, "grid": grid, "scene_key": scene.key(), "split": split},
        ))
    return out


# ---------------------------------------------------------------- samples

def _check(split: str, families: Sequence[str], grid: int, image_size: int | None,
           known: Sequence[str] = FAMILIES, version: int = DATA_VERSION) -> int:
    if version not in DATA_VERSIONS:
        raise ValueError(f"unknown ToyWorld data version {version!r}; expected one of {DATA_VERSIONS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    unknown = [f for f in families if f not in known]
    if unknown or not families:
        raise ValueError(f"unknown families {unknown or families!r}; expected a non-empty subset of {tuple(known)}")
    if not isinstance(grid, int) or grid < 6:
        raise ValueError(f"grid must be an int >= 6 (cells per side), got {grid!r}")
    if image_size is None:
        return CELL
    if image_size % grid:
        raise ValueError(f"image_size {image_size} is not divisible by grid {grid}")
    return image_size // grid


def make_sample(split: str, seed: int, i: int, family: str, grid: int = 12, frames: int = 3,
                template: int | None = None, cell: int = CELL, version: int = DATA_VERSION) -> Sample:
    """Sample `i` of (`split`, `seed`, `family`, data `version`): deterministic, and its scene belongs to
    `split`."""
    rng = random.Random(f"toyworld:{seed}:{split}:{family}:{i}")
    for _ in range(1000):
        q = _q_video(rng, grid, i, frames) if family == "video" else _BUILDERS[family](rng, grid, i, version)
        if q is not None and scene_split(q.key()) == split:
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError(f"could not draw a {family} scene for split {split}")
    templates = TEMPLATES[q.kind]
    t = rng.randrange(len(templates)) if template is None else template % len(templates)
    return _to_sample(q, f"toyworld-{split}-{seed}-{family}-{i}", family, t, cell, split, seed, i)


def _to_sample(q: _Q, sid: str, family: str, t: int, cell: int, split: str, seed: int, i: int) -> Sample:
    question = q.text(t)
    meta = dict(q.meta)
    meta.update({
        "qkind": q.kind, "template": t, "grid": q.frames[0].grid, "scene_key": q.key(),
        "rephrase_group": f"{split}-{seed}-{family}-{i}", "split": split,
    })
    return Sample(
        id=sid, family=family, images=[render(f, cell) for f in q.frames], question=question,
        answer=q.answer, answer_type=q.answer_type, choices=q.choices,
        references=list(q.references or [q.answer]), meta=meta,
    )


def toyworld_split(split: str, n: int, seed: int = 0, families: Sequence[str] = FAMILIES, grid: int = 12,
                   image_size: int | None = None, frames: int = 3, rephrasings: int = 1,
                   version: int = DATA_VERSION) -> list[Sample]:
    """`n` samples of `split`, families interleaved round-robin (so every family gets n/len(families)).

    Args:
        split: "train", "val" or "test" (scenes of different splits never coincide).
        n: number of samples (before rephrasing).
        seed: data seed; same arguments -> identical images and questions.
        families: subset of FAMILIES.
        grid: cells per side = visual tokens per side (12 -> 144 tokens, 24 -> 576).
        image_size: pixels per side; default grid * 8. Must be divisible by grid.
        frames: frames per video clip.
        rephrasings: templates per question (1..3); rephrasings of one question share the scene and
            `meta["rephrase_group"]` and differ in `meta["template"]` and the question text.
        version: data version (module docstring); a checkpoint's is `common.models.checkpoint.data_version`.
    """
    cell = _check(split, families, grid, image_size, version=version)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if rephrasings < 1:
        raise ValueError(f"rephrasings must be >= 1, got {rephrasings}")
    out = []
    for j in range(n):
        fam = families[j % len(families)]
        idx = j // len(families)
        base = make_sample(split, seed, idx, fam, grid, frames, template=0, cell=cell, version=version)
        if rephrasings == 1:
            out.append(base)
            continue
        for r in range(rephrasings):
            s = base if r == 0 else make_sample(split, seed, idx, fam, grid, frames, template=r, cell=cell,
                                                version=version)
            s.id = f"{s.id}-r{r}"
            out.append(s)
    return out


def toyworld_stream(seed: int = 0, families: Sequence[str] = FAMILIES, weights: Sequence[float] | None = None,
                    grid: int = 12, frames: int = 3, start: int = 0, split: str = "train",
                    version: int = DATA_VERSION) -> Iterator[Sample]:
    """An endless training stream: sample `k` (k >= start) is a deterministic function of (seed, k).

    Families are drawn with `weights`; templates at random (so the model sees every phrasing).
    `start` lets a resumed run continue exactly where it stopped.
    """
    _check(split, families, grid, None, version=version)
    w = list(weights) if weights is not None else [1.0] * len(families)
    k = start
    while True:
        rng = random.Random(f"toyworld-stream:{seed}:{k}")
        fam = rng.choices(list(families), weights=w)[0]
        yield make_sample(split, seed, k, fam, grid, frames, version=version)
        k += 1


_VERSION_2_KINDS: tuple[str, ...] = ("side_lr", "side_tb")


def vocabulary(version: int = DATA_VERSION) -> list[str]:
    """Every word ToyWorld data `version` can emit in a question or answer (sorted; punctuation included).

    Version 2's words are left out of version 1's vocabulary: a larger embedding would change the random
    initialisation of every later parameter, and `make toy-model` would no longer reproduce the committed
    model."""
    words: set[str] = set()
    fill = {
        "shape": SHAPES, "color": tuple(COLORS), "shapes": tuple(PLURALS.values()),
    }
    for kind, temps in TEMPLATES.items():
        if kind in _VERSION_2_KINDS and version < 2:
            continue
        for t in temps:
            words.update(t.replace("{", " {").replace("}", "} ").split())
    words.update(MC_SUFFIX.replace("{opts}", "").split())
    if version >= 2:
        words.update(MC_TEXT_SUFFIX.replace("{opts}", "").split())
    for vals in fill.values():
        words.update(vals)
    words.update(COLORS)
    words.update(BACKGROUNDS)
    words.update(SHAPES)
    words.update(SIZES)
    words.update(DIGITS)
    words.update(LETTERS)
    words.update(PLURALS.values())
    words.update(["yes", "no", "left", "right", "above", "below", "a", "showing", "and", "on", "background",
                  ",", ".", "?", ":"])
    words.update(str(k) for k in range(20))
    return sorted(w for w in words if not (w.startswith("{") and w.endswith("}")))
