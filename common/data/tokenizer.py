"""A word-level tokenizer for ToyWorld (HF `tokenizers`, WordLevel model).

The vocabulary is ToyWorld's closed generator vocabulary plus the prompt words and special tokens, so
every question and answer maps to whole words (a one-word answer is one token: fastest to learn).
Saved beside the checkpoint as tokenizer.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<bos>", "<eos>", "<unk>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE)


# Words of the toy model's prompt template (common/models/toy.py), beside ToyWorld's own vocabulary.
PROMPT_WORDS: tuple[str, ...] = ("image", "question", "answer", ":")


def build_tokenizer(words: Iterable[str] | None = None, data_version: int | None = None) -> Tokenizer:
    """Special tokens first (ids 0..4), then the sorted unique words: deterministic ids.

    `words` defaults to the vocabulary of ToyWorld data `data_version` (default: the default version) plus
    PROMPT_WORDS.
    """
    if words is None:
        from common.data.toyworld import DATA_VERSION, vocabulary

        words = list(vocabulary(data_version or DATA_VERSION)) + list(PROMPT_WORDS)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words) - set(SPECIAL_TOKENS)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Whitespace = split on \w+ and on runs of punctuation, so "image ." and "image." tokenize alike.
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Atomically; the bytes equal `Tokenizer.save`'s (pretty JSON)."""
    from common.artifacts import atomic_write_text

    atomic_write_text(path, tok.to_str(pretty=True))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """`path` is a tokenizer.json file or a checkpoint folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"path: no tokenizer at {path}")
    return Tokenizer.from_file(str(path))
