"""Class palettes of common remote-sensing label schemes and their mapping to rsgen's canonical scheme.

Each :class:`Palette` lists its class ids, names and display colours, the ids that mean "ignore"
(no-data, boundaries), optional raw-value aliases (LEVIR stores buildings as 255), and the canonical
class each of its classes maps to. Masks move between schemes through the canonical scheme:
``palette_a.to_canonical(mask)`` then ``palette_b.from_canonical(...)``; a canonical class that the
target scheme cannot express is an error naming the class, never a silent relabel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError

IGNORE = 255  # canonical id of ignored / no-data pixels


class PaletteError(InputError):
    """Unknown palette, unknown class ids or colours, or a class a scheme cannot express."""


@dataclass(frozen=True)
class ClassDef:
    id: int
    name: str
    color: tuple[int, int, int]
    canonical: str  # name of the canonical class this maps to


@dataclass(frozen=True)
class Palette:
    name: str
    classes: tuple[ClassDef, ...]
    ignore_ids: tuple[int, ...] = ()
    aliases: Mapping[int, int] = field(default_factory=dict)  # raw value on disk -> class id
    description: str = ""
    # canonical class name -> the id ``from_canonical`` writes for it: which of several classes mapping to one
    # canonical class stands for it (else the first listed), or the class that stands in for a canonical class
    # this scheme has no own class for (FLAIR has no road class: its roads are 'impervious surface').
    from_canonical_ids: Mapping[str, int] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def class_by_name(self, name: str) -> ClassDef:
        for c in self.classes:
            if c.name == name:
                return c
        raise PaletteError(f"palette {self.name!r} has no class {name!r}; its classes are {self.names}")

    def lookup(self, fill: int = IGNORE) -> np.ndarray:
        """A 256-entry table raw value -> class id (aliases applied), ``fill`` for unknown values."""
        table = np.full(256, fill, dtype=np.int32)
        for c in self.classes:
            table[c.id] = c.id
        for i in self.ignore_ids:
            table[i] = i
        for raw, cid in self.aliases.items():
            table[raw] = cid
        return table

    def to_canonical(self, mask: np.ndarray) -> np.ndarray:
        """Class ids of this palette -> canonical ids (ignore ids -> 255). Unknown ids raise."""
        check_ids(mask, self)
        table = np.full(256, IGNORE, dtype=np.uint8)
        for c in self.classes:
            table[c.id] = CANONICAL.class_by_name(c.canonical).id
        for raw, cid in self.aliases.items():
            table[raw] = table[cid]
        return table[mask.astype(np.int64)]

    def from_canonical(self, mask: np.ndarray) -> np.ndarray:
        """Canonical ids -> this palette's ids (255 -> the first ignore id, else 255). A canonical class
        with no equivalent here raises."""
        table = np.full(256, -1, dtype=np.int64)
        for c in reversed(self.classes):  # the first class listed wins for many-to-one mappings
            table[CANONICAL.class_by_name(c.canonical).id] = c.id
        for name, cid in self.from_canonical_ids.items():  # the scheme's explicit choices and stand-ins
            table[CANONICAL.class_by_name(name).id] = cid
        table[IGNORE] = self.ignore_ids[0] if self.ignore_ids else IGNORE
        present = np.unique(mask)
        missing = [int(v) for v in present if v > 255 or table[v] < 0]
        if missing:
            names = [CANONICAL.by_id().get(v, ClassDef(v, f"id {v}", (0, 0, 0), "")).name for v in missing]
            raise PaletteError(
                f"canonical class(es) {names} have no equivalent in the {self.name!r} scheme; relabel them to "
                "a class that scheme has, or use a scheme that has them"
            )
        return table[mask.astype(np.int64)].astype(np.uint8)

    def by_id(self) -> dict[int, ClassDef]:
        return {c.id: c for c in self.classes}

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) ids -> (H, W, 3) uint8 colours; ignore and unknown ids are black (decoded back as ignore)."""
        table = np.zeros((256, 3), dtype=np.uint8)
        for c in self.classes:
            table[c.id] = c.color
        for raw, cid in self.aliases.items():
            table[raw] = table[cid]
        return table[np.clip(mask, 0, 255).astype(np.int64)]

    def decode_colors(self, rgb: np.ndarray, *, source: str = "mask") -> np.ndarray:
        """(H, W, 3) colour-coded mask -> (H, W) class ids; an unknown colour raises with examples."""
        codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        out = np.full(codes.shape, -1, dtype=np.int64)
        if self.ignore_ids:
            out[codes == 0] = self.ignore_ids[0]  # black = ignore, as colorize() writes it
        for c in self.classes:
            r, g, b = c.color
            out[codes == (r << 16 | g << 8 | b)] = c.id
        if (out < 0).any():
            bad = np.unique(codes[out < 0])[:5]
            colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in bad.tolist()]
            raise PaletteError(
                f"{source}: colour(s) {colours} are not in the {self.name!r} palette "
                f"({[c.color for c in self.classes]}); pass the right --palette or an id-coded mask"
            )
        return out.astype(np.uint8)


def check_ids(mask: np.ndarray, palette: Palette, *, source: str = "mask") -> None:
    """Raise if ``mask`` holds values that are neither classes, ignore ids nor aliases of ``palette``."""
    allowed = set(palette.ids) | set(palette.ignore_ids) | set(palette.aliases)
    values = np.unique(mask)
    unknown = [int(v) for v in values if int(v) not in allowed]
    if unknown:
        raise PaletteError(
            f"{source}: unknown class id(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''} for the "
            f"{palette.name!r} scheme, whose ids are {sorted(allowed)}; pass the right --palette"
        )


def _palette(name: str, rows: Iterable[tuple[int, str, tuple[int, int, int], str]], **kwargs) -> Palette:
    return Palette(name=name, classes=tuple(ClassDef(*row) for row in rows), **kwargs)


# rsgen's canonical land-cover scheme: every palette maps into it.
CANONICAL = _palette(
    "canonical",
    [
        (0, "background", (70, 70, 70), "background"),  # not black: black is 'ignore' in colour masks
        (1, "building", (220, 20, 60), "building"),
        (2, "road", (255, 255, 255), "road"),
        (3, "impervious", (160, 160, 160), "impervious"),
        (4, "water", (0, 90, 255), "water"),
        (5, "bare", (160, 120, 80), "bare"),
        (6, "tree", (0, 110, 0), "tree"),
        (7, "low_vegetation", (120, 220, 90), "low_vegetation"),
        (8, "agriculture", (250, 210, 120), "agriculture"),
        (9, "vehicle", (255, 255, 0), "vehicle"),
        (10, "sports", (255, 0, 255), "sports"),
    ],
    ignore_ids=(IGNORE,),
    description="rsgen canonical land cover; 255 = ignore",
)

PALETTES: dict[str, Palette] = {
    "canonical": CANONICAL,
    "loveda": _palette(
        "loveda",
        [
            (1, "background", (255, 255, 255), "background"),
            (2, "building", (255, 0, 0), "building"),
            (3, "road", (255, 255, 0), "road"),
            (4, "water", (0, 0, 255), "water"),
            (5, "barren", (159, 129, 183), "bare"),
            (6, "forest", (0, 255, 0), "tree"),
            (7, "agriculture", (255, 195, 128), "agriculture"),
        ],
        ignore_ids=(0,),
        description="LoveDA (Wang et al. 2021): 0 = no-data",
    ),
    "potsdam": _palette(
        "potsdam",
        [
            (1, "impervious_surface", (255, 255, 255), "impervious"),
            (2, "building", (0, 0, 255), "building"),
            (3, "low_vegetation", (0, 255, 255), "low_vegetation"),
            (4, "tree", (0, 255, 0), "tree"),
            (5, "car", (255, 255, 0), "vehicle"),
            (6, "clutter", (255, 0, 0), "background"),
        ],
        ignore_ids=(0,),
        description="ISPRS Potsdam/Vaihingen, mmsegmentation ids: 0 = boundary/ignore",
    ),
    "openearthmap": _palette(
        "openearthmap",
        [
            (1, "bareland", (128, 0, 0), "bare"),
            (2, "rangeland", (0, 255, 36), "low_vegetation"),
            (3, "developed_space", (148, 148, 148), "impervious"),
            (4, "road", (255, 255, 255), "road"),
            (5, "tree", (34, 97, 38), "tree"),
            (6, "water", (0, 69, 255), "water"),
            (7, "agriculture_land", (75, 181, 73), "agriculture"),
            (8, "building", (222, 31, 7), "building"),
        ],
        ignore_ids=(0,),
        description="OpenEarthMap (Xia et al. 2023): 0 = unknown",
    ),
    "second": _palette(
        "second",
        [
            (0, "no_change", (255, 255, 255), "background"),
            (1, "water", (0, 0, 255), "water"),
            (2, "ground", (128, 128, 128), "bare"),
            (3, "low_vegetation", (0, 128, 0), "low_vegetation"),
            (4, "tree", (0, 255, 0), "tree"),
            (5, "building", (128, 0, 0), "building"),
            (6, "playground", (255, 0, 0), "sports"),
        ],
        description="SECOND semantic change (Yang et al. 2021): 0 = no change",
    ),
    "levir": _palette(
        "levir",
        [(0, "background", (0, 0, 0), "background"), (1, "building", (255, 255, 255), "building")],
        aliases={255: 1},
        description="LEVIR-CD / building masks: 0 background, 1 (or 255 on disk) building",
    ),
}
PALETTES["vaihingen"] = Palette(**{**PALETTES["potsdam"].__dict__, "name": "vaihingen"})

# FLAIR-1 / FLAIR-2 (IGN, Garioud et al. 2023): the 19 class codes of the MSK_*.tif masks (both datasets store the
# same codes; their baselines merge codes > 12 into 13 'other' at training time, not on disk) and the official
# colours (IGNF/FLAIR-1 README `flair_data`; identical to HySCDG's src/utils.py `lut_colors`, whose
# `convert_to_color` colours the masks its ControlNet sees). 19 'other' is black, as in both sources, so colour
# masks decode black as 'other'. Canonical classes FLAIR has no class for are drawn as the class that covers them.
PALETTES["flair"] = _palette(
    "flair",
    [
        (1, "building", (219, 14, 154), "building"),
        (2, "pervious_surface", (147, 142, 123), "bare"),
        (3, "impervious_surface", (248, 12, 0), "impervious"),
        (4, "bare_soil", (169, 113, 1), "bare"),
        (5, "water", (21, 83, 174), "water"),
        (6, "coniferous", (25, 74, 38), "tree"),
        (7, "deciduous", (70, 228, 131), "tree"),
        (8, "brushwood", (243, 166, 13), "low_vegetation"),
        (9, "vineyard", (102, 0, 130), "agriculture"),
        (10, "herbaceous_vegetation", (85, 255, 0), "low_vegetation"),
        (11, "agricultural_land", (255, 243, 13), "agriculture"),
        (12, "plowed_land", (228, 223, 124), "agriculture"),
        (13, "swimming_pool", (61, 230, 235), "water"),
        (14, "snow", (255, 255, 255), "bare"),
        (15, "clear_cut", (138, 179, 160), "bare"),
        (16, "mixed", (107, 113, 79), "tree"),
        (17, "ligneous", (197, 220, 66), "low_vegetation"),
        (18, "greenhouse", (153, 153, 255), "building"),
        (19, "other", (0, 0, 0), "background"),
    ],
    ignore_ids=(0,),
    # the most frequent FLAIR class of each many-to-one canonical class (FLAIR-1 datapaper frequencies), and
    # stand-ins: roads and vehicles on them are 'impervious surface', sports grounds 'pervious surface'
    from_canonical_ids={
        "bare": 4,
        "tree": 7,
        "low_vegetation": 10,
        "agriculture": 11,
        "road": 3,
        "vehicle": 3,
        "sports": 2,
    },  # fmt: skip
    description="FLAIR-1/FLAIR-2 aerial land cover (IGN), 19 class codes; 0 = no-data; 19 'other' is black",
)


def get_palette(name: str) -> Palette:
    try:
        return PALETTES[name.lower()]
    except KeyError:
        raise PaletteError(f"--palette={name!r}: unknown scheme; choose one of {sorted(PALETTES)}") from None


def convert(mask: np.ndarray, source: str | Palette, target: str | Palette) -> np.ndarray:
    """Relabel ``mask`` from one scheme to another through the canonical scheme."""
    src = get_palette(source) if isinstance(source, str) else source
    dst = get_palette(target) if isinstance(target, str) else target
    return dst.from_canonical(src.to_canonical(mask))
