"""A small CLIP-format BPE tokenizer learnt offline from a built-in remote-sensing word list.

Real bundles ship their own tokenizer. Tiny smoke-test bundles need one that works with no network;
this builds a standard ``CLIPTokenizer`` (byte-level BPE, ``</w>`` word ends, the CLIP special
tokens) whose merges are learnt here, deterministically, from :data:`RS_WORDS`. Every byte has a
token, so any text encodes (unseen words fall back to sub-words and bytes).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

RS_WORDS = """
a an the of and or with in on at by from to near along between into over under across around
aerial satellite image photo view scene top down overhead high low resolution optical multispectral
sentinel landsat naip worldview google earth planet airborne drone lidar radar sar infrared nir
rgb red green blue band cloud clouds cloudy clear haze hazy shadow shadows snow ice winter summer
spring autumn fall season dry wet rainy sunny morning evening date year month day time series
building buildings house houses residential dense sparse medium urban suburban rural village town
city downtown industrial commercial factory warehouse roof roofs construction site parking lot lots
road roads street streets highway motorway bridge bridges intersection railway rail track tracks
runway airport port harbor harbour ship ships boat boats car cars vehicle vehicles truck trucks
river rivers lake lakes pond sea ocean coast coastline beach shore water wetland swamp reservoir
dam canal stream forest forests tree trees woodland vegetation grass grassland meadow shrub shrubland
field fields farmland agriculture agricultural crop crops cropland orchard vineyard paddy plantation
bare soil barren sand desert dune dunes rock rocky mountain mountains hill hills valley cliff island
park playground stadium court courts tennis baseball football golf course pool swimming church school
center centre square storage tank tanks oil pipeline power plant solar panel panels wind turbine
mine quarry landfill greenhouse greenhouses dense sparse many few several some large small big tiny
long short wide narrow new old built demolished changed change unchanged north south east west
northeast northwest southeast southwest corner middle left right upper lower edge centre part
one two three four five six seven eight nine ten hundred meters metres meter metre m km pixel pixels
gsd resolution level zoom flood fire burned burnt damage damaged disaster earthquake hurricane
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: each byte maps to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def learn_bpe(words: list[str], max_merges: int = 4000) -> tuple[dict[str, int], list[str]]:
    """Learn CLIP-style BPE merges from ``words``; returns ``(vocab, merges)``.

    Ties between equally frequent pairs are broken lexicographically, so the result is
    deterministic.
    """
    byte_chars = bytes_to_unicode()
    counts = Counter(w.lower() for w in words)
    # Each word as a tuple of symbols; the last symbol carries the end-of-word marker.
    corpus: dict[tuple[str, ...], int] = {}
    for word, count in counts.items():
        symbols = [byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        corpus[tuple(symbols)] = corpus.get(tuple(symbols), 0) + count

    merges: list[tuple[str, str]] = []
    for _ in range(max_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, count in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        corpus = merged

    tokens = list(byte_chars.values())
    tokens += [t + "</w>" for t in byte_chars.values()]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, [" ".join(pair) for pair in merges]


def build_tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` learnt from :data:`RS_WORDS` (about 1.5k tokens).

    Goes through the standard ``vocab.json`` + ``merges.txt`` files, the format every
    transformers version loads.
    """
    vocab, merges = learn_bpe(RS_WORDS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)
