"""Change captions and question–answer pairs generated from the event list (LEVIR-CC / SECOND-CC
style): what changed, how many, where. Counts always equal the events' counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from conditions.change_events import ChangeEvent

NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
VERBS = {"add_building": "built", "remove_building": "demolished", "expand_building": "extended",
         "shrink_building": "partly demolished"}  # fmt: skip


def number_word(n: int) -> str:
    return NUMBERS[n] if n < len(NUMBERS) else str(n)


def region_name(x: float, y: float, width: int, height: int) -> str:
    """Where (x, y) lies in a 3×3 grid of the image: 'north-west corner', 'centre', 'east side'…"""
    col = min(int(3 * x / width), 2)
    row = min(int(3 * y / height), 2)
    names = [["north-west corner", "north", "north-east corner"], ["west side", "centre", "east side"],
             ["south-west corner", "south", "south-east corner"]]  # fmt: skip
    return names[row][col]


def _objects(events: list[ChangeEvent], kind: str) -> list[ChangeEvent]:
    """One entry per building (an added building may replace several classes: several events)."""
    seen, out = set(), []
    for e in events:
        if e.type == kind and (e.instance_id is None or e.instance_id not in seen):
            seen.add(e.instance_id)
            out.append(e)
    return out


def change_captions(events: list[ChangeEvent], width: int, height: int, rng: np.random.Generator) -> list[str]:
    """Several phrasings describing the events (counts exact, locations by image region)."""
    if not events:
        return ["there is no change", "nothing has changed between the two images", "the scene is unchanged"]
    phrases = []
    for kind in VERBS:
        items = _objects(events, kind)
        if not items:
            continue
        where = Counter(region_name(*e.centroid, width, height) for e in items).most_common(1)[0][0]
        noun = "building" if len(items) == 1 else "buildings"
        verb = VERBS[kind]
        phrases.append((f"{number_word(len(items))} {noun} {'was' if len(items) == 1 else 'were'} {verb}", where))
    transitions = Counter((e.class_from, e.class_to) for e in events if e.type == "transition")
    for (src, dst), n in sorted(transitions.items()):
        phrases.append((f"{number_word(n)} {src.replace('_', ' ')} area{'s' if n > 1 else ''} turned into "
                        f"{dst.replace('_', ' ')}", None))  # fmt: skip
    first = "; ".join(p if w is None else f"{p} in the {w}" for p, w in phrases)
    second = " and ".join(p for p, _ in phrases)
    total = sum(len(_objects(events, k)) for k in VERBS) + sum(transitions.values())
    third = f"{number_word(total)} change{'s' if total != 1 else ''} can be seen: {second}"
    captions = [first, second, third]
    rng.shuffle(captions)
    return captions


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
