"""Change captions: every count, class and place parsed back from the captions equals the events; salience
order, phrasings, no-change sentences, styles and the vocabulary, on real LoveDA and LEVIR layouts."""

import re
from collections import Counter

import numpy as np
import pytest
from shapely.geometry import Point

from conditions.change_captions import (
    CLASS_WORDS,
    EVERYWHERE,
    MAX_SPELLED,
    NOUNS,
    OTHERS,
    PLACES,
    STYLES,
    caption_vocabulary,
    change_captions,
    number_word,
    style_class,
)
from conditions.change_events import ChangeConfig, ChangeEvent, simulate_change
from conditions.masks import read_mask
from conditions.palettes import CANONICAL, get_palette
from tests.conftest import shared_file

SIZE = 256
# LEVIR-CC's vocabulary (words seen 5+ times), from Chen-Yang-Liu/RSCaMa data/LEVIR_CC/vocab.json
LEVIR_CC_WORDS = set(
    """a abandoned above across added additional all almost along alongside among an and angle another appear
    appeared appears arc are area areas around arranged as asphalt at attached bank bare bareland barelands
    basketball become becomes been before behind below beside besides between big bigger black block blocks blue
    both bottom boxes branch branches brand bridge bridges broadened brushwoods build building buildings built
    bungalow bungalows buses bushes but by bypass bypasses car cars cement center central certain change changed
    changes circle circular cleared clearing closely cluster comes compactly completed complex complexes concrete
    connected connecting connects consisting constructed construction constructions containers continues converge
    converted corner corners cottage court courts covered cross crossing crossroad crossroads curly curve curved cut
    decrease decreased decreases deep demolished dense densely denser depots desert detached developed develops
    difference different directions dirt disappear disappeared disappears distributed district divide divided down
    dried dry each edge either empty end enlarged erected existing expanded expands exposed extend extended extends
    extra face facilities factory fades few fewer field fields fill filled finished five flat flattened floor
    footpath for forest forests form formed former foundation foundations four from front full giant going grass
    grassland greatly green greener ground group groups grow growing grown grows half has have higher hole
    horizontal house houses huge identical image in increased increases intersect intersecting intersection
    intersections intertwined into is it its join joint jungle lake lakes land lane large larger lawn leading left
    less level leveled line lined lines little located long longer lot lots lower lower-left lower-right lush lusher
    luxuriant main make mall malls mansion mansions many massive meadow meadows medium middle missing moorland more
    most mounds moved much narrow near nearby neat neatly new newly next no nothing number occurred of old on one
    ones only open opposite orderly original other others out outside overpasses parallel park parked parking part
    parts pasture path paths picture piece place placed places plant planted plants platform playground playgrounds
    playing pond ponds pool pools power pulled put quantity raw realized rebuilt reconstructed reconstruction
    rectangular red reduced remaining removed renovated replace replaced replaces replacing reservoir reshaped
    residential respective restored right ring risen river road roads roadside roadsides roof room rooms round
    roundabout row rows rugged run running runs same scattered scene scenes screen seem separate several shaped show
    shows shrubs side sides similar single site sites situated six small smaller some space spaced spaces sparse
    square squares stacked stadium staggered stand storage straight street streets stretch stretches structure
    structures stuff sundries surround surrounded surrounding surrounds swimming t t-junction t-shaped take taken
    takes tank tanks that the their them there thicker this three through to top tow tower track tracks trail trails
    transformed tree trees trucks turn turned turning turns two u-shaped uncompleted under uneven unsurfaced up upper
    vacant vanished vanishes vegetation vehicles vertical very viaduct viaducts vibrant villa village villas vitals
    warehouse warehouses was wasteland water well were where which while white wide widened widens wider width
    winding with withered wood woodland woodlands woods yard yards yellow zigzag""".split()
)
ALL_EVENTS = {"add_building": 0.3, "remove_building": 0.2, "expand_building": 0.15, "shrink_building": 0.15,
              "transition": 0.2}  # fmt: skip
CONFIGS = [
    ChangeConfig(),
    ChangeConfig(events=ALL_EVENTS, change_fraction=0.15),
    ChangeConfig(events={"add_building": 1.0}, change_fraction=0.08, min_size_m=6, max_size_m=12),
    ChangeConfig(events={"transition": 1.0}, transitions={"background": "road", "agriculture": "building",
                 "tree": "bare", "water": "bare", "road": "impervious", "bare": "low_vegetation"}),
]  # fmt: skip
PATCH_WORDS = ("area", "areas", "parts", "piece", "patch", "patches")
LEVIR_CONFIG = ChangeConfig(events=ALL_EVENTS, transitions={"background": "low_vegetation"}, change_fraction=0.1)


@pytest.fixture(scope="module")
def layouts():
    loveda = read_mask(shared_file("seg/loveda/masks/0.png"), "loveda")
    levir = read_mask(shared_file("change/levir_like/label/test_2_0000_0000.png"), "levir")
    crop = (slice(0, SIZE), slice(0, SIZE))
    return [
        (loveda.palette.to_canonical(loveda.ids)[crop], 0.3, CONFIGS),
        (levir.palette.to_canonical(levir.ids)[crop], 0.5, [LEVIR_CONFIG, CONFIGS[2]]),
    ]


@pytest.fixture(scope="module")
def cases(layouts):
    """(events, seed) of many simulated pairs (most with events)."""
    out = []
    for semantic, gsd, configs in layouts:
        for config in configs:
            for seed in range(8):
                result = simulate_change(semantic, gsd, config, np.random.default_rng(seed), instances=None)
                out.append((result.events, seed))
    return out


# --- what the events say (computed here, independently of the module) ---


def cell(x, y):
    return min(int(3 * y / SIZE), 2), min(int(3 * x / SIZE), 2)


def expected_groups(events, style):
    """{(kind, src, dst): facts}: buildings by distinct instance id, transitions by the style's classes."""
    groups = {}
    for kind in ("add_building", "remove_building", "expand_building", "shrink_building"):
        mine = [e for e in events if e.type == kind]
        by_id = {}
        for i, e in enumerate(mine):
            by_id.setdefault(e.instance_id if e.instance_id is not None else f"event{i}", []).append(e)
        if by_id:
            cells = []
            for parts in by_id.values():
                w = np.array([e.area_m2 for e in parts])
                x, y = (np.array([e.centroid for e in parts]) * w[:, None]).sum(0) / w.sum()
                cells.append(cell(x, y))
            groups[(kind, None, None)] = {
                "n": len(by_id), "cells": cells, "area": sum(e.area_m2 for e in mine),
                "src": {style_class(style, e.class_from) for e in mine},
                "dst": {style_class(style, e.class_to) for e in mine},
                "road": all(any(e.aligned_with == "road" for e in p) for p in by_id.values()),
            }  # fmt: skip
    for e in events:
        if e.type == "transition":
            key = ("transition", style_class(style, e.class_from), style_class(style, e.class_to))
            g = groups.setdefault(key, {"n": 0, "cells": [], "area": 0.0})
            g["n"] += 1
            g["cells"].append(cell(*e.centroid))
            g["area"] += e.area_m2
    return groups


# --- a parser for the captions' grammar ---


def phrases(style):
    """Class phrase -> style class key, longest first."""
    table = {w: key for key, words in CLASS_WORDS[style].items() for w in words}
    table.update({n + s: "building" for n in NOUNS[style] for s in ("", "s")})
    return dict(sorted(table.items(), key=lambda kv: -len(kv[0])))


def count_of(word, style):
    if word == "many":
        return "many"
    if word in ("a", "an"):
        return 1
    spelled = {number_word(n): n for n in range(1, MAX_SPELLED[style] + 1)}
    return spelled.get(word)


def parse_sentence(sentence, style):
    """-> (key, n, cells or 'everywhere', facts): the group key and what the sentence claims."""
    s = f" {sentence} "
    places = {p: (r, c) for r, row in enumerate(PLACES[style]) for c, p in enumerate(row)}
    cells = []
    for p in sorted(places, key=len, reverse=True):
        while f" {p} " in s:
            at = s.index(f" {p} ")
            cells.append((at, places[p]))
            s = s[:at] + " @ " + s[at + len(p) + 2 :]
    cells = [c for _, c in sorted(cells)]
    if f" {EVERYWHERE} " in s:
        cells, s = "everywhere", s.replace(f" {EVERYWHERE} ", " @ ")
    road = " along the road " in s
    s = s.replace(" along the road ", " ")
    tokens = s.split()
    n = next(count_of(t, style) for t in tokens if count_of(t, style) is not None)
    found = []  # (position, class key)
    for phrase, key in phrases(style).items():
        while f" {phrase} " in s:
            at = s.index(f" {phrase} ")
            found.append((at, key, phrase))
            s = s[:at] + " # " * len(phrase.split()) + s[at + len(phrase) + 2 :]
    found.sort()
    facts = {"road": road}
    patch = [i for i, t in enumerate(tokens) if t in PATCH_WORDS and i > 0
             and (count_of(tokens[i - 1], style) is not None or tokens[i - 1] == "new")]  # fmt: skip
    if patch:
        classes = [k for _, k, p in found]
        if " replaced " in s and " replaced by " not in s:  # "<to> replaced <n> areas of <from>"
            return ("transition", classes[1], classes[0]), n, cells, facts
        if any(v in tokens for v in ("appeared", "formed")):
            return ("transition", None, classes[0]), n, cells, facts
        if any(v in tokens for v in ("disappeared", "cleared")):
            return ("transition", classes[0], None), n, cells, facts
        if "changed" in tokens:
            return ("transition", classes[0] if classes else None, classes[0] if classes else None), n, cells, facts
        return ("transition", classes[0], classes[1]), n, cells, facts
    assert found and found[0][1] == "building" and found[0][2].startswith(NOUNS[style]), sentence
    extra = [k for _, k, _ in found[1:]]
    if any(v in tokens for v in ("part", "partly", "reduced", "smaller")):
        kind = "shrink_building"
    elif any(v in tokens for v in ("extended", "enlarged", "expanded", "larger")):
        kind = "expand_building"
    elif any(v in tokens for v in ("demolished", "removed", "disappeared", "by")):
        kind = "remove_building"
        facts["dst"] = extra[0] if extra else None
    else:
        assert any(v in tokens for v in ("built", "constructed", "new")), sentence
        kind = "add_building"
        facts["src"] = extra[0] if extra else None
    return (kind, None, None), n, cells, facts


def check_caption(caption, events, style):
    """Every claim of ``caption`` holds for ``events``; the most salient group comes first."""
    groups = expected_groups(events, style)
    sentences = caption.split(". ")
    assert len(words(caption)) + len(sentences) - 1 <= 50  # the RSICC / SecondCC loaders' max_len
    if sentences[-1] == OTHERS:
        sentences = sentences[:-1]
        assert len(sentences) < len(groups)
    else:
        assert len(sentences) == len(groups) <= 3, caption
    assert 1 <= len(sentences) <= 3
    areas = []
    for sentence in sentences:
        key, n, cells, facts = parse_sentence(sentence, style)
        g = groups[key]
        areas.append(g["area"])
        assert n == g["n"] or (n == "many" and g["n"] > MAX_SPELLED[style]), (sentence, g)
        counts = Counter(g["cells"])
        if cells == "everywhere":
            assert len(counts) >= 3
        else:
            assert cells == sorted(counts, key=lambda c: (-counts[c], c)), (sentence, g)
        if facts["road"]:
            assert key[0] == "add_building" and g["road"]
        if facts.get("src"):
            assert g["src"] == {facts["src"]}
        if facts.get("dst"):
            assert g["dst"] == {facts["dst"]}
    ranked = sorted((g["area"] for g in groups.values()), reverse=True)
    assert areas == ranked[: len(areas)]  # the most salient groups, largest first


def words(text):
    return re.findall(r"[a-z0-9-]+", text)


@pytest.mark.parametrize("style", STYLES)
def test_captions_state_exactly_what_the_events_say(cases, style):
    with_events = 0
    for events, seed in cases:
        captions = change_captions(events, SIZE, SIZE, np.random.default_rng(seed), style=style)
        assert len(captions) == 5 and len(set(captions)) == 5
        if events:
            with_events += 1
            for caption in captions:
                check_caption(caption, events, style)
    assert with_events > 40


def test_buildings_are_counted_by_instance_and_large_counts():
    """A building replacing several classes is one building; LEVIR-CC counts to six, then 'many'."""

    def add(i, x, y, cls="agriculture", road="road"):  # fmt: skip
        return ChangeEvent("add_building", cls, "building", Point(x, y).buffer(2), 40.0, (x, y), i, road)

    events = [add(1, 30, 30), add(1, 32, 30, "bare"), add(2, 40, 40)] + [add(i, 200, 220) for i in range(3, 10)]
    assert check_caption(change_captions(events, SIZE, SIZE, np.random.default_rng(0))[0], events, "rsgen") is None
    for style in STYLES:
        captions = change_captions(events, SIZE, SIZE, np.random.default_rng(1), style=style, count=8)
        for caption in captions:
            check_caption(caption, events, style)
            assert ("nine" in words(caption)) == (style != "levir-cc")
            assert ("many" in words(caption)) == (style == "levir-cc")


def test_places_and_road_alignment_are_named():
    events = [ChangeEvent("add_building", "bare", "building", Point(x, 20).buffer(3), 30.0, (x, 20), i, "road")
              for i, x in enumerate((200, 230))]  # fmt: skip
    captions = change_captions(events, SIZE, SIZE, np.random.default_rng(3), count=10)
    assert all("two" in words(c) and "north-east corner" in c for c in captions)
    assert any("along the road" in c for c in captions) and any("houses" in words(c) for c in captions)
    levir = change_captions(events, SIZE, SIZE, np.random.default_rng(3), style="levir-cc", count=10)
    assert all("in the top right corner" in c for c in levir)


@pytest.mark.parametrize("style", STYLES)
def test_no_change_and_distractor_sentences(style):
    for distractors in (False, True):
        captions = change_captions([], SIZE, SIZE, np.random.default_rng(0), style=style, distractors=distractors)
        assert len(captions) == 5 and len(set(captions)) == 5
        joined = " | ".join(captions)
        assert re.search(r"no|nothing|same|identical|unchanged", joined)
        assert not re.search(r"built|demolished|building|house|area", joined)
        if distractors:
            assert "there is no difference" not in captions and "identical" not in joined
    assert "the scene is the same as before" in change_captions([], 8, 8, np.random.default_rng(0), count=6)


def test_levir_cc_style_uses_only_levir_cc_words(cases):
    assert set(caption_vocabulary("levir-cc")) <= LEVIR_CC_WORDS
    levir_classes = {"buildings", "houses", "road", "bareland", "trees", "grass", "water", "fields", "cars",
                     "playground", "concrete", "ground"}  # fmt: skip
    for events, seed in cases:
        for caption in change_captions(events, SIZE, SIZE, np.random.default_rng(seed), style="levir-cc"):
            assert set(words(caption)) <= LEVIR_CC_WORDS, caption
            assert not {"farmland", "vegetation", "north", "south", "east", "west"} & set(words(caption))
            assert events or not levir_classes & set(words(caption))


def test_second_cc_style_uses_second_classes():
    second = get_palette("second")
    from synth_datasets.change_writer import SECOND_FALLBACK

    for c in CANONICAL.classes:
        name = c.name if c.name in second.names and c.name not in SECOND_FALLBACK else SECOND_FALLBACK[c.name]
        assert style_class("second-cc", c.name) == name
    assert set(CLASS_WORDS["second-cc"]) == set(second.names) - {"no_change"}


@pytest.mark.parametrize("style", STYLES)
def test_vocabulary_is_complete(cases, style):
    vocabulary = caption_vocabulary(style)
    assert vocabulary == sorted(set(vocabulary))
    seen = set()
    for events, seed in cases:
        for distractors in (False, True):
            rng = np.random.default_rng(seed)
            for caption in change_captions(events, SIZE, SIZE, rng, style=style, distractors=distractors, count=8):
                seen |= set(words(caption))
    assert seen <= set(vocabulary), sorted(seen - set(vocabulary))
    numbers = {w for n in range(1, 100) for w in words(number_word(n))}
    assert len(seen - numbers) > 0.6 * len(set(vocabulary) - numbers)


def test_deterministic_and_rng_only_picks_phrasing(cases):
    events = next(e for e, _ in cases if len(e) > 3)
    a = change_captions(events, SIZE, SIZE, np.random.default_rng(7), style="levir-cc", count=6)
    assert a == change_captions(events, SIZE, SIZE, np.random.default_rng(7), style="levir-cc", count=6)
    b = change_captions(events, SIZE, SIZE, np.random.default_rng(8), style="levir-cc", count=6)
    assert a != b
    for caption in a + b:
        check_caption(caption, events, "levir-cc")
    assert len(change_captions(events, SIZE, SIZE, np.random.default_rng(0), count=1)) == 1


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"style='coco'.*'rsgen', 'levir-cc', 'second-cc'"):
        change_captions([], SIZE, SIZE, rng, style="coco")
    with pytest.raises(ValueError, match=r"count=0: expected at least 1"):
        change_captions([], SIZE, SIZE, rng, count=0)
    with pytest.raises(ValueError, match=r"style='x'"):
        caption_vocabulary("x")


def test_the_checker_rejects_wrong_claims():
    """The parser is strict: a wrong count, place, class or order fails the check."""
    events = [ChangeEvent("add_building", "agriculture", "building", Point(x, 30).buffer(3), 60.0, (x, 30), i, None)
              for i, x in enumerate((20, 30))]  # fmt: skip
    events.append(ChangeEvent("transition", "tree", "bare", Point(128, 128).buffer(5), 30.0, (128, 128)))
    caption = "two houses were built in the north-west corner. an area of trees in the centre was turned into bare land"
    check_caption(caption, events, "rsgen")
    wrong = [caption.replace("two", "three"), caption.replace("north-west", "north-east"),
             caption.replace("trees", "farmland"), caption.replace("built", "demolished"),
             "an area of trees in the centre was turned into bare land. two houses were built in the north-west corner",
             "two houses were built along the road in the north-west corner"]  # fmt: skip
    for text in wrong:
        with pytest.raises((AssertionError, KeyError)):
            check_caption(text, events, "rsgen")
