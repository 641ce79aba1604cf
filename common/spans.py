"""Token-type spans of a left-padded multimodal prompt: system | image (one or more frame groups) | instruction.

Spans are read once per input from `input_ids`, `attention_mask` and the model's `image_token_id` (the
`VisionLanguageModel` contract: images are already expanded into their placeholders), and kept per sample:
samples of a batch differ in padding and length, so nothing here ever indexes sample ``[0]``.
Generated tokens form the `response` span.

All indices are positions in the padded ``[B, L]`` sequence of the input they were computed from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenSpans:
    """Spans of one sample, as half-open ``[start, end)`` positions of its padded row.

    Attributes:
        pad: number of left-padding positions (``[0, pad)``).
        system: tokens before the first image token.
        images: one ``(start, end)`` per contiguous run of image tokens (several for multi-frame clips).
        instruction: tokens after the last image token, up to the end of the prompt.
        response: generated tokens (empty for a prompt).
        length: padded row length.
    """

    pad: int
    system: tuple[int, int]
    images: tuple[tuple[int, int], ...]
    instruction: tuple[int, int]
    response: tuple[int, int] = (0, 0)
    length: int = 0
    _image_index: torch.Tensor = field(default=None, repr=False, compare=False)

    @property
    def n_visual(self) -> int:
        return sum(e - s for s, e in self.images)

    @property
    def image_start(self) -> int:
        return self.images[0][0]

    @property
    def image_end(self) -> int:
        return self.images[-1][1]

    def visual_positions(self) -> torch.Tensor:
        """Positions of all visual tokens, ascending, [n_visual] long."""
        return self._image_index

    def text_positions(self) -> torch.Tensor:
        """Positions of every non-pad, non-visual token (system, text between frames, instruction, response)."""
        pos = torch.arange(self.pad, self.length)
        is_vis = torch.zeros(self.length, dtype=torch.bool)
        is_vis[self._image_index] = True
        return pos[~is_vis[self.pad:]]

    def instruction_positions(self) -> torch.Tensor:
        return torch.arange(*self.instruction)

    def with_response(self, n_new: int) -> "TokenSpans":
        """The same prompt followed by `n_new` generated tokens."""
        end = self.instruction[1]
        return TokenSpans(self.pad, self.system, self.images, self.instruction, (end, end + n_new),
                          self.length + n_new, self._image_index)


def compute_spans(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int,
    prompt_length: int | None = None,
    tokens_per_frame: int | None = None,
) -> list[TokenSpans]:
    """Spans of every sample of a left-padded batch.

    Args:
        input_ids: [B, L] long.
        attention_mask: [B, L] (0 = padding) or None (no padding).
        image_token_id: the placeholder id of visual tokens.
        prompt_length: if given, positions ``>= prompt_length`` are generated tokens (the `response` span).
        tokens_per_frame: split runs of image tokens into frame groups of this size (frames of a clip are
            often adjacent, so runs alone cannot separate them).

    Raises:
        ValueError: if a sample has no image token, or its padding is not on the left.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    end = L if prompt_length is None else prompt_length
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ids = input_ids.detach().cpu()
    am = attention_mask.detach().cpu().bool()
    out = []
    for b in range(B):
        valid = am[b]
        pad = int((~valid).long().cumprod(0).sum())  # leading zeros of the mask
        if not bool(valid[pad:].all()):
            raise ValueError(f"attention_mask: sample {b} is not left-padded (a 0 follows a 1)")
        is_img = (ids[b] == image_token_id) & valid
        is_img[end:] = False
        pos = torch.nonzero(is_img).flatten()
        if pos.numel() == 0:
            raise ValueError(
                f"input_ids: sample {b} has no image token (image_token_id={image_token_id}); "
                "token reduction needs the expanded visual-token placeholders in the prompt"
            )
        # contiguous runs of image tokens = frame groups
        breaks = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1
        starts = torch.cat([pos[:1], pos[breaks]]).tolist()
        ends = (torch.cat([pos[breaks - 1], pos[-1:]]) + 1).tolist()
        images = tuple(zip(starts, ends))
        if tokens_per_frame:
            if any((e - s0) % tokens_per_frame for s0, e in images):
                raise ValueError(f"tokens_per_frame={tokens_per_frame} does not divide the image runs {images} "
                                 f"of sample {b}")
            images = tuple((a, a + tokens_per_frame) for s0, e in images for a in range(s0, e, tokens_per_frame))
        out.append(TokenSpans(pad=pad, system=(pad, images[0][0]), images=images,
                              instruction=(images[-1][1], end), response=(end, L), length=L,
                              _image_index=pos))
    return out


# Token kinds of a (possibly pruned) sequence, one int8 code per position. Merged tokens count as visual.
PAD, SYSTEM, VISUAL, INSTRUCTION, RESPONSE = -1, 0, 1, 2, 3


def kinds_of(spans: list[TokenSpans], length: int | None = None) -> torch.Tensor:
    """[B, L] int8 token kinds (PAD/SYSTEM/VISUAL/INSTRUCTION/RESPONSE) of the rows the spans were read from."""
    L = length or max(s.length for s in spans)
    out = torch.full((len(spans), L), PAD, dtype=torch.int8)
    for b, s in enumerate(spans):
        out[b, s.system[0]:s.system[1]] = SYSTEM
        out[b, s.image_start:s.instruction[0]] = SYSTEM  # text between frame groups
        out[b, s.visual_positions()] = VISUAL
        out[b, s.instruction[0]:s.instruction[1]] = INSTRUCTION
        out[b, s.response[0]:s.response[1]] = RESPONSE
    return out
