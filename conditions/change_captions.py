"""Change captions and question–answer pairs generated from the event list, phrased like the human
captions of LEVIR-CC and SECOND-CC: short lower-case sentences, ``count`` phrasings per pair, the most
salient change first, counts and places. Every number, class and place is derived from the events.

Public material checked for the phrasing (none of it is copied):

* LEVIR-CC's word list, ``data/LEVIR_CC/vocab.json`` of Chen-Yang-Liu/RSCaMa (the LEVIR-CC vocabulary
  with words seen 5+ times): number words stop at "six", places are image-relative ("top", "bottom",
  "left side", "lower-left", "corner", "middle"), no compass words; classes "houses", "buildings",
  "road", "bareland", "trees", "grass", "water", "fields", "cars", "playground", "concrete", "ground";
  verbs "built", "constructed", "demolished", "removed", "replaced", "turned into", "converted".
* LEVIR-CC's no-change references as used by the evaluation scripts derived from Chen-Yang-Liu/RSICC
  ("the scene is the same as before", "there is no difference", ...), and Chen-Yang-Liu/RSICC's
  ``eval_results/*.json`` sample output ("a lake appears in the bareland").
* ChangeCapsInRS/SecondCC ``README.md``: five human sentences per pair, SECOND's six classes, pairs
  with illumination / registration differences but no change.
* ``/work/shared/data/captions/rsicd`` (RSICD single-image captions): general words ("bareland",
  "trees", "houses", "playground", "near", "side", "middle").

Styles:

* ``"rsgen"`` — every canonical class (``conditions.palettes.CANONICAL``; "background" is "other land"),
  compass places from the 3×3 ``region_name`` grid ("in the north-east corner"), numbers spelled up to
  ninety-nine ("many" above).
* ``"levir-cc"`` — only words of LEVIR-CC's vocabulary: each canonical class gets its nearest LEVIR
  word (impervious → "concrete ground", agriculture → "fields", low vegetation → "grass", vehicles →
  "cars", sports → "playground"); "background" has none and is left out of the sentence (an area of
  background that became road reads "an area of road appeared ..."); image-relative places; numbers up to
  "six", "many" above (LEVIR-CC never counts further).
* ``"second-cc"`` — SECOND's classes (``get_palette("second")``, the canonical → SECOND mapping of
  ``synth_datasets.change_writer.SECOND_FALLBACK``): water, ground, low vegetation, trees, buildings,
  playground; a change that stays within one SECOND class (bare → road) reads "... of ground ... changed".

Salience: events form groups (new / demolished / extended / partly demolished buildings, counted by
distinct instance id; transitions by from → to class of the style); groups are ordered by total area
(m²), largest first, and each caption describes the three largest ("there are some other small changes"
when more; fewer when the caption would pass MAX_WORDS). Places: each building's area-weighted centroid,
each transition's centroid, in the 3×3 grid; one or two cells are named (most items first), three or more
read "across the image". New buildings that were all aligned with a road are "along the road"; when they
all replaced one class, "on the <class>". Pairs with no event get no-change sentences ("distractors"
pairs: sentences that admit the images differ but say nothing changed). Captions are lower case, sentences
joined by ". ". ``caption_vocabulary(style)`` lists every word a caption of that style can hold.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from conditions.change_events import ChangeEvent

STYLES = ("rsgen", "levir-cc", "second-cc")
BUILDING_KINDS = ("add_building", "remove_building", "expand_building", "shrink_building")
MAX_GROUPS = 3  # groups described per caption, most salient first
NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]  # fmt: skip
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MAX_SPELLED = {"rsgen": 99, "levir-cc": 6, "second-cc": 99}  # larger counts read "many"
REGIONS = [["north-west corner", "north", "north-east corner"], ["west side", "centre", "east side"],
           ["south-west corner", "south", "south-east corner"]]  # fmt: skip
IMAGE_PLACES = [["in the top left corner", "at the top", "in the top right corner"],
                ["on the left side", "in the middle", "on the right side"],
                ["in the bottom left corner", "at the bottom", "in the bottom right corner"]]  # fmt: skip
COMPASS_PLACES = [[("on the " if "side" in r else "in the ") + r for r in row] for row in REGIONS]
PLACES = {"rsgen": COMPASS_PLACES, "levir-cc": IMAGE_PLACES, "second-cc": IMAGE_PLACES}
EVERYWHERE = "across the image"
AREAS = {"levir-cc": {False: ("area", "piece"), True: ("areas", "parts")},  # LEVIR-CC has no "pieces"/"patch"
         "rsgen": {False: ("area", "patch"), True: ("areas", "patches")},
         "second-cc": {False: ("area", "patch"), True: ("areas", "patches")}}  # fmt: skip
MAX_WORDS = 45  # per caption, counting an "and" per sentence break: RSICC / SecondCC loaders drop over 50 tokens
OTHERS = "there are some other small changes"
# canonical class -> the class key of each style (None: the style has no word for it, left out)
SECOND_OF = {
    "background": "ground",
    "road": "ground",
    "impervious": "ground",
    "bare": "ground",
    "vehicle": "ground",
    "agriculture": "low_vegetation",
    "sports": "playground",
}  # mirrors change_writer.SECOND_FALLBACK
CLASS_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "rsgen": {"background": ("other land",), "building": ("buildings",), "road": ("road",),
              "impervious": ("paved ground",), "water": ("water",), "bare": ("bare land", "bareland"),
              "tree": ("trees", "woodland"), "low_vegetation": ("low vegetation", "grass"),
              "agriculture": ("farmland", "cropland"), "vehicle": ("vehicles",), "sports": ("sports field",)},
    "levir-cc": {"building": ("buildings", "houses"), "road": ("road",), "impervious": ("concrete ground",),
                 "water": ("water",), "bare": ("bareland",), "tree": ("trees", "woods"), "low_vegetation": ("grass",),
                 "agriculture": ("fields",), "vehicle": ("cars",), "sports": ("playground",)},
    "second-cc": {"water": ("water",), "ground": ("ground",), "low_vegetation": ("low vegetation",),
                  "tree": ("trees",), "building": ("buildings",), "playground": ("playground",)},
}  # fmt: skip
NOUNS = {"rsgen": ("building", "house"), "levir-cc": ("building", "house"), "second-cc": ("building",)}
# sentence templates per group kind: (template, styles or None for all)
TEMPLATES: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {
    "add_building": [("{n} {noun} {be} built {mod} {where}", None),
                     ("{n} new {noun} {be} constructed {mod} {where}", None),
                     ("{n} new {noun} appeared {mod} {where}", None), ("there {is} {n} new {noun} {where}", None),
                     ("{where} {n} {noun} {have} been built {mod}", None)],
    "remove_building": [("{n} {noun} {be} demolished {where}", None), ("{n} {noun} {where} {be} removed", None),
                        ("{n} {noun} {where} {have} disappeared", None),
                        ("{n} {noun} {where} {be} replaced by {to}", None),
                        ("{where} {n} {noun} {have} been demolished", None)],
    "expand_building": [("{n} {noun} {be} extended {where}", None), ("{n} {noun} {where} {be} enlarged", None),
                        ("{n} {noun} {where} {be} expanded", None), ("{where} {n} {noun} {have} been extended", None),
                        ("{n} larger {noun} replaced the old {ones} {where}", None)],
    "shrink_building": [("{n} {noun} {be} reduced {where}", None), ("part of {n} {noun} {where} was demolished", None),
                        ("{n} {noun} {where} {be} partly demolished", ("rsgen", "second-cc")),
                        ("{n} smaller {noun} replaced the old {ones} {where}", None),
                        ("{where} part of {n} {noun} has been removed", None),
                        ("{n} {noun} {where} {have} been reduced", None)],
    "transition": [("{n} {area} of {from} {where} {be} turned into {to}", None),
                   ("{n} {area} of {from} {where} {be} replaced by {to}", None),
                   ("{n} {area} of {from} {where} {be} converted into {to}", None),
                   ("{to} replaced {n} {area} of {from} {where}", None)],
    "appear": [("{n} {area} of {to} appeared {where}", None), ("{n} new {area} of {to} {be} formed {where}", None),
               ("{where} {n} {area} of {to} appeared", None)],
    "vanish": [("{n} {area} of {from} {where} {have} disappeared", None),
               ("{n} {area} of {from} {where} {be} cleared", None),
               ("{where} {n} {area} of {from} {be} removed", None)],
    "unknown": [("{n} {area} {where} {have} changed", None), ("{where} {n} {area} {have} changed", None)],
    "same": [("{n} {area} of {from} {where} {be} changed", None), ("{n} {area} of {from} {where} {have} changed", None),
             ("{where} {n} {area} of {from} {have} changed", None)],
}  # fmt: skip
NO_CHANGE = {
    "levir-cc": ["the scene is the same as before", "there is no difference", "nothing has changed",
                 "the two scenes are identical", "no change has occurred", "there is no change"],
    "other": ["the scene is the same as before", "there is no difference", "nothing has changed",
              "the two images are identical", "no change has occurred", "there is no change between the two images"],
}  # fmt: skip
DISTRACTED = {
    "levir-cc": ["the scene is the same as before", "nothing has changed", "no change has occurred",
                 "the two scenes seem different but nothing has changed", "there is no change",
                 "the two scenes seem different but there is no change"],
    "other": ["the scene is the same as before", "nothing has changed on the ground", "no real change has occurred",
              "the two images look different but nothing has changed", "there is no real change between the two images",
              "only the imaging conditions differ and the scene is unchanged"],
}  # fmt: skip


@dataclass(frozen=True)
class Group:
    """Events of one kind (and, for transitions, one from → to pair of the style) described together."""

    kind: str  # a building kind, "transition", "appear" / "vanish" (one class unnamed), "same" or "unknown"
    n: int  # buildings (distinct instances) or transition patches
    area: float  # m², the salience
    cells: tuple[tuple[int, int], ...]  # (row, col) of each item in the 3×3 grid
    src: str | None = None  # style class key of what was there before (transitions; one-class new buildings)
    dst: str | None = None  # style class key of what is there now (transitions; demolitions)
    road: bool = False  # new buildings: all aligned with a road


def number_word(n: int) -> str:
    """0–99 in words ("twenty-one"), digits above."""
    if n < len(NUMBERS):
        return NUMBERS[n]
    if n < 100:
        return TENS[n // 10] + (f"-{NUMBERS[n % 10]}" if n % 10 else "")
    return str(n)


def _cell(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    return min(max(int(3 * y / height), 0), 2), min(max(int(3 * x / width), 0), 2)


def region_name(x: float, y: float, width: int, height: int) -> str:
    """Where (x, y) lies in a 3×3 grid of the image: 'north-west corner', 'centre', 'east side'…"""
    row, col = _cell(x, y, width, height)
    return REGIONS[row][col]


def _objects(events: list[ChangeEvent], kind: str) -> list[ChangeEvent]:
    """One entry per building (an added building may replace several classes: several events)."""
    seen, out = set(), []
    for e in events:
        if e.type == kind and (e.instance_id is None or e.instance_id not in seen):
            seen.add(e.instance_id)
            out.append(e)
    return out


def style_class(style: str, canonical: str) -> str | None:
    """The class key ``style`` uses for a canonical class; None where it has no word for it."""
    key = SECOND_OF.get(canonical, canonical) if style == "second-cc" else canonical
    return key if key in CLASS_WORDS[style] else None


def _check(style: str, count: int = 1) -> None:
    if style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {STYLES}")
    if count < 1:
        raise ValueError(f"count={count}: expected at least 1 caption")


def _buildings(events: list[ChangeEvent], kind: str, width: int, height: int, style: str) -> Group | None:
    """One group per building kind: instances merged (area-weighted centroid), counted once each."""
    parts: dict[Any, list[ChangeEvent]] = {}
    for i, e in enumerate(x for x in events if x.type == kind):
        parts.setdefault(("id", e.instance_id) if e.instance_id is not None else ("event", i), []).append(e)
    if not parts:
        return None
    cells = []
    for items in parts.values():
        weights = np.array([max(e.area_m2, 1e-9) for e in items])
        x, y = (np.array([e.centroid for e in items]) * weights[:, None]).sum(0) / weights.sum()
        cells.append(_cell(float(x), float(y), width, height))
    mine = [e for items in parts.values() for e in items]
    src = {style_class(style, e.class_from) for e in mine}
    dst = {style_class(style, e.class_to) for e in mine}
    road = all(any(e.aligned_with == "road" for e in items) for items in parts.values())
    return Group(kind, len(parts), sum(e.area_m2 for e in mine), tuple(cells), src.pop() if len(src) == 1 else None,
                 dst.pop() if len(dst) == 1 else None, road)  # fmt: skip


def _transitions(events: list[ChangeEvent], width: int, height: int, style: str) -> list[Group]:
    """Transition patches grouped by the style's from → to classes."""
    by_pair: dict[tuple[str | None, str | None], list[ChangeEvent]] = {}
    for e in events:
        if e.type == "transition":
            by_pair.setdefault((style_class(style, e.class_from), style_class(style, e.class_to)), []).append(e)
    groups = []
    for (src, dst), items in by_pair.items():
        kind = "same" if src == dst else "appear" if src is None else "vanish" if dst is None else "transition"
        kind = "unknown" if src is dst is None else kind
        cells = tuple(_cell(*e.centroid, width, height) for e in items)
        groups.append(Group(kind, len(items), sum(e.area_m2 for e in items), cells, src, dst))
    return groups


def change_groups(events: list[ChangeEvent], width: int, height: int, style: str = "rsgen") -> list[Group]:
    """The groups a caption of ``style`` describes, most salient (largest total area) first."""
    _check(style)
    groups = [g for k in BUILDING_KINDS if (g := _buildings(events, k, width, height, style)) is not None]
    groups += _transitions(events, width, height, style)
    order = BUILDING_KINDS + ("transition", "appear", "vanish", "same", "unknown")
    return sorted(groups, key=lambda g: (-g.area, order.index(g.kind), str(g.src), str(g.dst)))


def _where(cells: tuple[tuple[int, int], ...], style: str) -> str:
    counts = Counter(cells)
    if len(counts) > 2:
        return EVERYWHERE
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return " and ".join(PLACES[style][r][c] for r, c in ranked)


def _count(n: int, style: str, rng: np.random.Generator) -> str:
    if n > MAX_SPELLED[style]:
        return "many"
    return str(rng.choice(["a", "one"])) if n == 1 else number_word(n)


def _word(style: str, key: str | None, rng: np.random.Generator) -> str:
    return str(rng.choice(CLASS_WORDS[style][key])) if key is not None else ""


def _sentence(group: Group, style: str, rng: np.random.Generator) -> str:
    """One sentence for ``group``; the rng picks the template and the synonyms."""
    plural = group.n != 1
    options = [t for t, styles in TEMPLATES[group.kind] if styles is None or style in styles]
    if group.dst is None:
        options = [t for t in options if "{to}" not in t]
    template = options[int(rng.integers(len(options)))]
    noun = str(rng.choice(NOUNS[style])) + ("s" if plural else "")
    mods = [""] + (["along the road"] if group.road else [])
    mods += [f"on the {_word(style, group.src, rng)}"] if group.src else []
    slots = {"n": _count(group.n, style, rng), "noun": noun, "be": "were" if plural else "was",
             "is": "are" if plural else "is", "have": "have" if plural else "has", "ones": "ones" if plural else "one",
             "area": str(rng.choice(AREAS[style][plural])), "where": _where(group.cells, style),
             "from": _word(style, group.src, rng), "to": _word(style, group.dst, rng),
             "mod": str(rng.choice(mods))}  # fmt: skip
    text = " ".join(template.format(**slots).split())
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _length(sentences: list[str]) -> int:
    return sum(len(t.split()) for t in sentences) + len(sentences) - 1


def _compose(groups: list[Group], style: str, rng: np.random.Generator) -> str:
    """The most salient groups (up to MAX_GROUPS, within MAX_WORDS), then OTHERS if any were left out."""
    sentences = [_sentence(g, style, rng) for g in groups[:MAX_GROUPS]]
    kept = 1
    for k in range(len(sentences), 1, -1):
        if _length(sentences[:k] + ([OTHERS] if k < len(groups) else [])) <= MAX_WORDS:
            kept = k
            break
    return ". ".join(sentences[:kept] + ([OTHERS] if kept < len(groups) else []))


def _no_change(style: str, distractors: bool) -> list[str]:
    table = DISTRACTED if distractors else NO_CHANGE
    return table["levir-cc" if style == "levir-cc" else "other"]


def change_captions(
    events: list[ChangeEvent],
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    style: str = "rsgen",
    distractors: bool = False,
    count: int = 5,
) -> list[str]:
    """``count`` distinct phrasings of the events (fewer distinct ones only where the grammar has no more:
    then they repeat in order); the rng only picks phrasings."""
    _check(style, count)
    groups = change_groups(events, width, height, style)
    if not groups:
        pool = list(_no_change(style, distractors))
        pool = [pool[i] for i in rng.permutation(len(pool))]
        return [pool[i % len(pool)] for i in range(count)]
    captions: list[str] = []
    for _ in range(40 * count):
        caption = _compose(groups, style, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    return [captions[i % len(captions)] for i in range(count)]


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9-]+", text.lower()))


def caption_vocabulary(style: str = "rsgen") -> list[str]:
    """Every word a caption of ``style`` can contain (sorted; '.' separates sentences and is not a word)."""
    _check(style)
    words = {"a", "an", "and", "many", "were", "was", "are", "is", "have", "has", "along", "road", "on", "one", "ones"}
    words |= {w for pair in AREAS[style].values() for w in pair}
    words |= {w for n in range(1, MAX_SPELLED[style] + 1) for w in _tokens(number_word(n))}
    words |= {w for row in PLACES[style] for p in row for w in _tokens(p)} | _tokens(EVERYWHERE) | _tokens(OTHERS)
    words |= {w for syn in CLASS_WORDS[style].values() for s in syn for w in _tokens(s)}
    words |= {noun + suffix for noun in NOUNS[style] for suffix in ("", "s")}
    for templates in TEMPLATES.values():
        literal = [re.sub(r"\{\w+\}", " ", t) for t, styles in templates if styles is None or style in styles]
        words |= {w for t in literal for w in _tokens(t)}
    for table in (NO_CHANGE, DISTRACTED):
        words |= {w for s in table["levir-cc" if style == "levir-cc" else "other"] for w in _tokens(s)}
    return sorted(words)


def change_qa(events: list[ChangeEvent], width: int, height: int, gsd: float) -> list[dict[str, Any]]:
    """Questions about counts, presence, area and location, with answers from the events."""
    added, removed = _objects(events, "add_building"), _objects(events, "remove_building")
    area = sum(e.area_m2 for e in events)
    qa = [
        {"question": "has anything changed?", "answer": "yes" if events else "no", "type": "presence"},
        {"question": "how many buildings were built?", "answer": str(len(added)), "type": "count"},
        {"question": "how many buildings were demolished?", "answer": str(len(removed)), "type": "count"},
        {"question": "were any buildings built?", "answer": "yes" if added else "no", "type": "presence"},
        {"question": "what area changed, in square metres?", "answer": str(round(area)), "type": "area"},
        {
            "question": "what fraction of the image changed?",
            "answer": f"{area / (width * height * gsd * gsd):.3f}",
            "type": "area",
        },  # fmt: skip
    ]
    if added:
        where = Counter(region_name(*e.centroid, width, height) for e in added).most_common(1)[0][0]
        qa.append({"question": "where were most new buildings built?", "answer": where, "type": "location"})
    return qa
