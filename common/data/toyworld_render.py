"""ToyWorld scenes and their rendering: coloured shapes and digit tiles on a grid of visual patches.

A scene lives on a `grid` x `grid` lattice of cells; one cell is one visual patch of the toy model
(8 px by default, so 12 x 12 cells -> a 96 px image -> 144 visual tokens). Objects are aligned to
cells: a "small" object fills one cell, a "large" one a 2 x 2 block. Keeping objects this small is
what makes ToyWorld sensitive to token loss (DESIGN.md §5): an object lives in 1-4 of 144 patches,
so a random 11% of the visual tokens usually misses it, while a text-guided method can keep it.
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw, ImageFont

# Object colours are bright; background colours are chosen to contrast with all of them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 100, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 70, 210),
    "orange": (250, 140, 20),
    "cyan": (40, 220, 230),
    "pink": (250, 140, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (115, 115, 115),
    "white": (235, 235, 235),
    "brown": (100, 65, 35),
}
# "tile" is the glyph carrier (a filled square with a digit on it, TextVQA-like); the others are plain.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "tile")
PLAIN_SHAPES: tuple[str, ...] = SHAPES[:-1]
SIZES: tuple[str, ...] = ("small", "large")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "diamond": "diamonds", "cross": "crosses", "tile": "tiles",
}

# The old 6 x 11 bitmap font (Pillow's built-in); its digits are 7 px tall, so one fits an 8 px cell.
_FONT = ImageFont.load_default_imagefont()


@dataclass(frozen=True)
class Obj:
    """One object: `row`, `col` are the top-left cell; a large object covers 2 x 2 cells."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    digit: str | None = None  # only tiles carry a digit

    @property
    def span(self) -> int:
        return 2 if self.size == "large" else 1

    @property
    def center(self) -> tuple[float, float]:
        """(row, col) of the centre, in cells."""
        return self.row + self.span / 2, self.col + self.span / 2

    def cells(self) -> list[tuple[int, int]]:
        return [(self.row + i, self.col + j) for i in range(self.span) for j in range(self.span)]

    def name(self) -> str:
        """'red circle': unique within a scene (scenes never repeat a colour-shape pair)."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background colour and a tuple of objects on a grid x grid lattice (one video frame, or an image)."""

    grid: int
    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    def key(self) -> str:
        """Canonical text of the scene (object order does not matter): used for hashing and splits."""
        objs = sorted((o.shape, o.color, o.size, o.row, o.col, o.digit or "") for o in self.objects)
        return f"g{self.grid}|{self.background}|{objs}"

    @classmethod
    def from_key(cls, key: str) -> Scene:
        """The scene `key()` describes (objects in the key's sorted order). A clip's key joins its frames'
        keys with "||"; this parses the first. Samples keep only the key (`meta["scene_key"]`), so
        analyses that need the objects (ROIs, answer checks) rebuild them here."""
        grid, background, objs = key.split("||")[0].split("|", 2)
        return cls(int(grid[1:]), background, tuple(Obj(shape, color, size, row, col, digit or None)
                                                    for shape, color, size, row, col, digit in ast.literal_eval(objs)))

    def without(self, obj: Obj) -> Scene:
        return replace(self, objects=tuple(o for o in self.objects if o != obj))


def stable_hash(text: str) -> int:
    """A 64-bit hash that does not depend on PYTHONHASHSEED."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def free_cells(scene: Scene, margin: int = 1) -> set[tuple[int, int]]:
    """Cells not occupied by an object nor within `margin` cells of one (objects never touch)."""
    blocked = set()
    for o in scene.objects:
        for r, c in o.cells():
            for dr in range(-margin, margin + 1):
                for dc in range(-margin, margin + 1):
                    blocked.add((r + dr, c + dc))
    return {(r, c) for r in range(scene.grid) for c in range(scene.grid)} - blocked


def fits(scene: Scene, size: str, row: int, col: int, ignore: Obj | None = None) -> bool:
    span = 2 if size == "large" else 1
    if row < 0 or col < 0 or row + span > scene.grid or col + span > scene.grid:
        return False
    base = scene.without(ignore) if ignore is not None else scene
    free = free_cells(base)
    return all((row + i, col + j) in free for i in range(span) for j in range(span))


def render(scene: Scene, cell: int = 8) -> Image.Image:
    """Draw the scene as an RGB image of (grid * cell) px; no anti-aliasing, so bytes are deterministic."""
    size = scene.grid * cell
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw_obj(img, draw, o, cell)
    return img


def _draw_obj(img: Image.Image, draw: ImageDraw.ImageDraw, o: Obj, cell: int) -> None:
    s = o.span * cell
    x0, y0 = o.col * cell, o.row * cell
    m = max(1, s // 8)  # 1 px margin in a small object, 2 px in a large one
    x1, y1 = x0 + s - 1 - m, y0 + s - 1 - m
    x0, y0 = x0 + m, y0 + m
    fill = COLORS[o.color]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=fill)  # smaller than a tile
    elif o.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif o.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif o.shape == "cross":
        w = max(1, (x1 - x0 + 1) // 3)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2 - 1 + (w % 2)), fill=fill)
        draw.rectangle((cx - w / 2, y0, cx + w / 2 - 1 + (w % 2), y1), fill=fill)
    elif o.shape == "tile":
        gx0, gy0 = o.col * cell, o.row * cell  # tiles fill their whole cell block
        draw.rectangle((gx0, gy0, gx0 + s - 1, gy0 + s - 1), fill=fill)
        _draw_digit(img, o.digit or "0", gx0, gy0, s)
    else:  # pragma: no cover - guarded by the generator
        raise ValueError(f"unknown shape {o.shape!r}")


def _draw_digit(img: Image.Image, digit: str, x: int, y: int, s: int) -> None:
    """Black digit from the built-in bitmap font, scaled (nearest) to the tile: 7 px tall per 8 px cell."""
    glyph = Image.new("L", (8, 8), 0)
    ImageDraw.Draw(glyph).text((1, -1), digit, fill=255, font=_FONT)
    if s != 8:
        glyph = glyph.resize((s, s), Image.NEAREST)
    img.paste((0, 0, 0), (x, y, x + s, y + s), glyph)
