"""A CLIP tokenizer for the Fashion-MNIST captions (``safemax.data.captions``), in CLIP's standard
files — ``vocab.json`` and ``merges.txt`` — so that ``transformers.CLIPTokenizer.from_pretrained``
loads it with no custom code.

Like OpenAI's CLIP vocabulary it is byte-level BPE: the 256 byte symbols, alone and with CLIP's
word end ``</w>``, so that any text tokenizes without an unknown token; then merges learnt here,
deterministically, from the captions' words, so that each word of a caption is one token
("sneaker" → ``sneaker</w>``; "t-shirt" is three words to CLIP — "t", "-", "shirt" — and three
tokens); then ``<|startoftext|>`` and ``<|endoftext|>`` (also the padding, as in Stable
Diffusion 1.x). ``MAX_LENGTH`` = 16 tokens with the start and end ones: the longest caption is 12.

The merges are plain BPE training on the distinct words (each counted once): repeatedly merge the
most frequent adjacent pair, ties broken by the pair's order, until every word is one symbol.
Replaying merges in the order learnt reproduces the training segmentation, which is what the
tokenizer does; ``tests/test_captions.py`` checks it through ``CLIPTokenizer`` itself.
"""
import json
import os
import re
from collections import Counter

from safemax.data.captions import CAPTIONS

MAX_LENGTH = 16
"""The tokenizer's ``model_max_length``: prompt embeddings are ``[batch, 16, hidden]``."""

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END = "</w>"


def byte_symbols() -> list:
    """The 256 characters GPT-2's and CLIP's ``bytes_to_unicode`` give the bytes 0..255, in order
    (printable bytes are themselves; the others are shifted above 255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return [table[b] for b in range(256)]


def words(texts) -> list:
    """The words CLIP's pre-tokenizer cuts ``texts`` into (lower-cased; letters, digits one by
    one, and runs of other symbols such as "-"), distinct, in order of first appearance. The
    captions are ASCII, where this is CLIP's own rule."""
    found = []
    for text in texts:
        found += re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())
    return list(dict.fromkeys(found))


def learn_merges(vocabulary: list) -> list:
    """BPE merges ``[(left, right), ...]`` that make each word of ``vocabulary`` one symbol (its
    characters, the last with ``</w>``), most frequent pair first, ties by the pair's order."""
    split = [tuple(w[:-1]) + (w[-1] + END,) for w in vocabulary]
    merges = []
    while True:
        pairs = Counter(p for s in split for p in zip(s, s[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        split = [_merge(s, best) for s in split]


def _merge(symbols: tuple, pair: tuple) -> tuple:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def vocabulary(texts=CAPTIONS) -> tuple:
    """``(vocab {token: id}, merges [(left, right)])`` of a byte-level CLIP tokenizer whose merges
    make every word of ``texts`` (default: every caption) one token."""
    merges = learn_merges(words(texts))
    symbols = byte_symbols()
    tokens = symbols + [s + END for s in symbols] + [a + b for a, b in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, merges


def write_tokenizer(folder: str, max_length: int = MAX_LENGTH, texts=CAPTIONS):
    """Writes the tokenizer to ``folder`` in CLIP's files (``vocab.json``, ``merges.txt``, and
    ``CLIPTokenizer.save_pretrained``'s own) and returns it (a ``transformers.CLIPTokenizer``)."""
    from transformers import CLIPTokenizer
    os.makedirs(folder, exist_ok=True)
    vocab, merges = vocabulary(texts)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # positional: transformers 5's CLIPTokenizer takes the vocabulary and merges (paths or objects) first
    tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def caption_tokenizer(max_length: int = MAX_LENGTH):
    """The captions' tokenizer, built in a temporary folder and loaded from its files."""
    import tempfile

    from transformers import CLIPTokenizer
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(folder, max_length)
        return CLIPTokenizer.from_pretrained(folder)


__all__ = ["MAX_LENGTH", "byte_symbols", "words", "learn_merges", "vocabulary", "write_tokenizer",
           "caption_tokenizer"]
