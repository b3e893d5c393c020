"""Vocabularies, for trimming one: a tokenizer's pieces, their kinds, how it merges, in no file format.

A trim keeps a set of token ids and renumbers them densely (new id = rank in the sorted kept ids,
so `keep[new] == old`). The kept set is always the user's policy united with a floor the tokenizer
needs to stay total (special, control and byte-fallback tokens; WordPiece's single characters;
BPE's alphabet), and then closed under the tokenizer's merge intermediates: a BPE or SentencePiece
token is only reachable through the smaller tokens its merges pass through. With that closure a
trimmed tokenizer gives exactly the original ids for any text whose original tokens were all
kept, and falls back to smaller pieces (finally bytes) for the rest.

The loaders (`sources.hf`, `sources.gguf`) build a `Vocabulary` from their files and give it a
`retokenizer`: the tokenizer of a trimmed vocabulary, rewritten in their own format.
"""

from __future__ import annotations

import functools
import heapq
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np

from edgeemb.errors import EdgeembError

Tokenize = Callable[[str], list[int]]
TokenizerModel = Literal["wordpiece", "bpe", "spm", "unigram"]


class TokenType(IntEnum):
    """llama.cpp's token types (GGUF `tokenizer.ggml.token_type`), used for every vocabulary."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_SPM_SPACE = "\u2581"
_UNUSED_NAME = re.compile(r"<unused\d+>|\[unused\d+\]")


@dataclass(frozen=True, eq=False)
class Vocabulary:
    model: TokenizerModel
    tokens: list[str]  # piece text as the tokenizer stores it
    types: np.ndarray  # uint8 TokenType by id
    special: dict[str, int]  # role (bos, eos, unk, pad, cls, sep, mask, ...) -> id: a trim must keep these
    tokenize: Tokenize  # the original tokenizer: text -> ids, no special tokens added
    retokenizer: Callable[[np.ndarray], Tokenize]  # kept ids -> the trimmed tokenizer (new ids)
    scores: np.ndarray | None = None  # spm: merge priority by id
    merges: list[tuple[str, str]] | None = None  # bpe, by rank
    subword_prefix: str = ""  # wordpiece: "##"
    byte_level: bool = False  # bpe over GPT-2's printable byte alphabet

    def __len__(self) -> int:
        return len(self.tokens)

    def surface(self, index: int) -> str:
        """The text a piece stands for (what its script is judged on)."""
        token = self.tokens[index]
        if self.model == "wordpiece":
            return token.removeprefix(self.subword_prefix) if token != self.subword_prefix else token
        if self.model in ("spm", "unigram"):
            return token.replace(_SPM_SPACE, " ")
        if self.byte_level:
            return bytes(_BYTE_DECODER.get(c, 0x3F) for c in token).decode("utf-8", "replace")
        return token

    def floor(self) -> np.ndarray:
        """Ids every trim keeps, so that any text still tokenises: special and byte tokens, and the
        pieces the tokenizer falls back to (bool mask by id)."""
        keep = np.isin(self.types, [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.BYTE])
        keep &= ~np.array([bool(_UNUSED_NAME.fullmatch(t)) for t in self.tokens])  # reserved slots hold nothing
        keep[list(self.special.values())] = True
        if self.model == "wordpiece":
            prefix = self.subword_prefix
            keep |= np.array([len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1) for t in self.tokens])
        elif self.model == "bpe":
            produced = {a + b for a, b in self.merges or ()}
            keep |= np.array([t not in produced for t in self.tokens])
        elif self.model == "unigram":
            keep |= np.array([len(t) == 1 or (len(t) == 2 and t[0] == _SPM_SPACE) for t in self.tokens])
        return keep

    def closure(self, keep: np.ndarray) -> np.ndarray:
        """`keep` with every merge intermediate of a kept token added (BPE: the merges' parts;
        SentencePiece: the pieces llama.cpp's score-ordered merging passes through)."""
        keep = keep.copy()
        if self.model == "bpe":
            index = {t: i for i, t in enumerate(self.tokens)}
            producers: dict[str, list[tuple[str, str]]] = {}
            for a, b in self.merges or ():
                producers.setdefault(a + b, []).append((a, b))
            stack = [self.tokens[i] for i in np.flatnonzero(keep)]
            while stack:
                for pair in producers.get(stack.pop(), ()):
                    for part in pair:
                        if part in index and not keep[index[part]]:
                            keep[index[part]] = True
                            stack.append(part)
        elif self.model == "spm":
            index = {t: i for i, t in enumerate(self.tokens)}
            scores = self.scores if self.scores is not None else np.zeros(len(self.tokens), np.float32)
            for i in np.flatnonzero(keep & (self.types == TokenType.NORMAL)):
                for piece in _spm_intermediates(self.tokens[i], index, scores):
                    keep[index[piece]] = True
        return keep

    @functools.cached_property
    def scripts(self) -> list[frozenset[str]]:
        """The scripts of each piece's characters (see `char_script`)."""
        return [frozenset(map(char_script, self.surface(i))) for i in range(len(self.tokens))]


def char_script(char: str) -> str:
    """'ascii' for U+0000-007F; 'common' for other punctuation, symbols, digits, spaces and marks;
    else the first word of the character's Unicode name ('latin', 'cyrillic', 'cjk', ...)."""
    if char < "\x80":
        return "ascii"
    if unicodedata.category(char)[0] in "PSNZMC":
        return "common"
    return unicodedata.name(char, "unknown unknown").split(" ", 1)[0].lower()


def script_mask(vocab: Vocabulary, scripts: tuple[str, ...]) -> np.ndarray:
    """Ids whose every character is in `scripts`. 'ascii' is U+0000-007F alone; any other script
    (e.g. 'latin') brings ASCII and the common punctuation, digits and marks along with it."""
    allowed = set(scripts) | ({"ascii", "common"} if set(scripts) - {"ascii"} else set())
    written = np.array(
        [kinds <= allowed and not _UNUSED_NAME.fullmatch(token) for kinds, token in zip(vocab.scripts, vocab.tokens)]
    )
    return written & (vocab.types != TokenType.UNUSED)


def single_characters(vocab: Vocabulary) -> np.ndarray:
    """Pieces of one character, with or without a leading space (bool mask by id)."""
    one_character = np.array([len(vocab.surface(i).removeprefix(" ")) == 1 for i in range(len(vocab))])
    return one_character & (vocab.types == TokenType.NORMAL)


def _spm_intermediates(text: str, index: dict[str, int], scores: np.ndarray) -> set[str]:
    """Every piece llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm) forms on its way to
    `text`: characters merged pairwise, the best-scored adjacent pair first (ties: leftmost)."""
    symbols = list(text)
    alive = [True] * len(symbols)
    after = list(range(1, len(symbols))) + [-1]
    before = list(range(-1, len(symbols) - 1))
    heap: list[tuple[float, int, str, int]] = []
    formed: set[str] = set()

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            merged = symbols[left] + symbols[right]
            if merged in index:
                heapq.heappush(heap, (-float(scores[index[merged]]), left, merged, right))

    for i in range(len(symbols) - 1):
        push(i, i + 1)
    while heap:
        _, left, merged, right = heapq.heappop(heap)
        if not (alive[left] and alive[right]) or after[left] != right or symbols[left] + symbols[right] != merged:
            continue
        symbols[left], alive[right] = merged, False
        formed.add(merged)
        after[left] = after[right]
        if after[right] >= 0:
            before[after[right]] = left
        push(before[left], left)
        push(left, after[left])
    return formed


@functools.cache
def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


_BYTE_DECODER = _gpt2_byte_decoder()


def merge_survives(left: str, right: str, kept: set[str] | dict[str, int]) -> bool:
    """A BPE merge stays in a trimmed vocabulary only if both parts and the result are kept: a
    merge whose result is missing fails to load, and one whose part is missing never applies."""
    return left in kept and right in kept and left + right in kept


def renumbering(keep: np.ndarray, size: int) -> np.ndarray:
    """old id -> new id (-1 for a dropped id) for the sorted kept ids `keep`."""
    old_to_new = np.full(size, -1, np.int64)
    old_to_new[keep] = np.arange(len(keep))
    return old_to_new


def require_kept(vocab: Vocabulary, keep: np.ndarray) -> None:
    """A clear error if a trim would drop a token the model cannot work without."""
    mask = np.zeros(len(vocab), bool)
    mask[keep] = True
    for role, index in vocab.special.items():
        if not mask[index]:
            raise EdgeembError(
                f"trim_vocab: the policy drops {vocab.tokens[index]!r}, the model's {role} token; "
                "a trimmed model still needs it"
            )
    dropped_bytes = np.flatnonzero((vocab.types == TokenType.BYTE) & ~mask)
    if len(dropped_bytes):
        raise EdgeembError(
            f"trim_vocab: the policy drops the byte token {vocab.tokens[dropped_bytes[0]]!r}; "
            "byte fallback needs all 256"
        )
