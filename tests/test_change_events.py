"""Change-event simulation: reproducible, exact labels, on real LEVIR and LoveDA layouts."""

import cv2
import numpy as np
import pytest
import rasterio

from conditions.change_events import ChangeConfig, ChangeError, building_instances, rasterize_events, simulate_change
from conditions.masks import read_mask
from conditions.palettes import CANONICAL
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def levir():
    mask = read_mask(shared_file("change/levir_like/label/test_2_0000_0000.png"), "levir")
    return mask.palette.to_canonical(mask.ids)  # buildings on background, 0.5 m


@pytest.fixture(scope="module")
def loveda():
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        crop = src.read(1, window=((0, 256), (0, 256)))
    from conditions.palettes import get_palette

    return get_palette("loveda").to_canonical(crop)  # 0.3 m rural scene


@pytest.mark.parametrize("layout", ["levir", "loveda"])
def test_change_mask_is_exactly_the_events(layout, request):
    semantic = request.getfixturevalue(layout)
    result = simulate_change(semantic, 0.5, ChangeConfig(change_fraction=0.08), np.random.default_rng(1))
    assert result.events and result.change_mask.any()
    assert np.array_equal(rasterize_events(result.events, semantic.shape), result.change_mask)
    assert result.change_mask.sum() >= 0.08 * (semantic != 255).sum()
    for event in result.events:  # label1/label2 agree with every event's from -> to
        pixels = rasterize_events([event], semantic.shape)
        assert (semantic[pixels] == CANONICAL.class_by_name(event.class_from).id).all()
        assert (result.semantic[pixels] == CANONICAL.class_by_name(event.class_to).id).all()
        assert event.area_m2 == pytest.approx(pixels.sum() * 0.25)
    unchanged = ~result.change_mask
    assert np.array_equal(semantic[unchanged], result.semantic[unchanged])


def test_reproducible_and_chainable(levir):
    config = ChangeConfig(change_fraction=0.05, events={"add_building": 1.0})
    a = simulate_change(levir, 0.5, config, np.random.default_rng(7))
    b = simulate_change(levir, 0.5, config, np.random.default_rng(7))
    assert np.array_equal(a.semantic, b.semantic) and [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    assert all(e.type == "add_building" and e.class_to == "building" for e in a.events)
    assert len(np.unique(a.instances)) > len(np.unique(levir > 0))  # new instances
    c = simulate_change(a.semantic, 0.5, config, np.random.default_rng(8), instances=a.instances)  # third date
    assert (c.semantic == 1).sum() > (a.semantic == 1).sum() > (levir == 1).sum()


def test_removal_and_transitions(levir, loveda):
    removed = simulate_change(levir, 0.5, ChangeConfig(change_fraction=0.05, events={"remove_building": 1}),
                              np.random.default_rng(0))  # fmt: skip
    assert {e.type for e in removed.events} == {"remove_building"}
    assert (removed.semantic == 1).sum() < (levir == 1).sum()
    config = ChangeConfig(change_fraction=0.05, events={"transition": 1}, transitions={"agriculture": "bare"})
    moved = simulate_change(loveda, 0.3, config, np.random.default_rng(0))
    assert {(e.class_from, e.class_to) for e in moved.events} == {("agriculture", "bare")}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"change_fraction": 1.5}, r"change_fraction=1\.5: expected a fraction in \(0, 1\]"),
        ({"events": {"flood": 1.0}}, r"unknown event type\(s\) \['flood'\]"),
        ({"transitions": {"forest": "bare"}}, r"transitions: unknown class 'forest'"),
        ({"transitions": {"bare": "bare"}}, r"'bare' -> 'bare' changes nothing"),
        ({"min_size_m": 50, "max_size_m": 10}, r"expected 0 < min <= max"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ChangeError, match=match):
        ChangeConfig(**kwargs)


def test_layout_errors(levir):
    with pytest.raises(ChangeError, match=r"the layout is empty"):
        simulate_change(np.full((8, 8), 255, np.uint8), 0.5, ChangeConfig(), np.random.default_rng(0))
    with pytest.raises(ChangeError, match=r"instances: shape \(4, 4\) does not match"):
        simulate_change(levir, 0.5, ChangeConfig(), np.random.default_rng(0), instances=np.zeros((4, 4), np.int32))


def test_expand_and_shrink_buildings(levir):
    config = ChangeConfig(change_fraction=0.03, events={"expand_building": 1, "shrink_building": 1})
    result = simulate_change(levir, 0.5, config, np.random.default_rng(2))
    kinds = {e.type for e in result.events}
    assert kinds <= {"expand_building", "shrink_building"} and kinds
    assert np.array_equal(rasterize_events(result.events, levir.shape), result.change_mask)
    for e in result.events:
        assert (e.class_to == "building") == (e.type == "expand_building") and e.instance_id


def test_repeated_expansions_grow_from_the_grown_building():
    """A building expanded again and again grows from all its pixels so far, far beyond one expansion's reach."""
    semantic = np.full((96, 96), CANONICAL.class_by_name("bare").id, np.uint8)
    semantic[45:51, 45:51] = CANONICAL.class_by_name("building").id  # one 6x6 px building (3 m at 0.5 m)
    config = ChangeConfig(change_fraction=0.3, events={"expand_building": 1})
    result = simulate_change(semantic, 0.5, config, np.random.default_rng(0))
    assert len(result.events) >= 4 and {e.type for e in result.events} == {"expand_building"}
    grown = result.instances == result.events[0].instance_id
    assert np.array_equal(grown, (semantic == CANONICAL.class_by_name("building").id) | result.change_mask)
    rows, cols = np.flatnonzero(grown.any(axis=1)), np.flatnonzero(grown.any(axis=0))
    reach = round(3.0 / 0.5) + 1  # one expansion grows a building by at most 3 m (6 px), inside a 7 px margin
    assert rows[0] < 45 - reach or rows[-1] > 50 + reach or cols[0] < 45 - reach or cols[-1] > 50 + reach


def _road_layout(angle_deg: float, size: int = 256, width_px: float = 12) -> np.ndarray:
    """Low vegetation crossed by one straight road through the centre at ``angle_deg`` (image x to y)."""
    import math

    import shapely
    from rasterio import features

    a, c = math.radians(angle_deg), size / 2
    line = shapely.LineString([(c - size * math.cos(a), c - size * math.sin(a)),
                               (c + size * math.cos(a), c + size * math.sin(a))])  # fmt: skip
    semantic = np.full((size, size), CANONICAL.class_by_name("low_vegetation").id, np.uint8)
    road = features.rasterize([(line.buffer(width_px / 2, cap_style="flat"), 1)], out_shape=(size, size))
    semantic[road.astype(bool)] = CANONICAL.class_by_name("road").id
    return semantic


def _angle_error(pixels: np.ndarray, angle_deg: float) -> float:
    """Degrees between the minimum-area rectangle of ``pixels`` and ``angle_deg``, modulo 90."""
    import cv2

    ys, xs = np.nonzero(pixels)
    diff = (cv2.minAreaRect(np.column_stack([xs, ys]).astype(np.float32))[2] - angle_deg) % 90
    return min(diff, 90 - diff)


@pytest.mark.parametrize("angle", [30, 63])
def test_new_buildings_run_parallel_to_a_road_and_keep_off_it(angle):
    import cv2

    semantic = _road_layout(angle)
    road = semantic == CANONICAL.class_by_name("road").id
    config = ChangeConfig(change_fraction=0.12, events={"add_building": 1}, road_setback_m=2.0)
    result = simulate_change(semantic, 0.5, config, np.random.default_rng(3))
    ids = sorted({e.instance_id for e in result.events})
    assert len(ids) >= 4 and np.array_equal(rasterize_events(result.events, semantic.shape), result.change_mask)
    errors = [_angle_error(result.instances == i, angle) for i in ids]
    assert max(errors) < 2.0, errors  # every footprint parallel to the road (mod 90°)
    assert not (result.change_mask & road).any()  # never on the road ...
    distance = cv2.distanceTransform((~road).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert distance[result.change_mask].min() > 2.0 / 0.5  # ... and at least the 2 m set-back away
    aligned = {e.aligned_with for e in result.events}
    assert "road" in aligned and aligned <= {"road", "building"}  # the first one has only the road to follow
    again = simulate_change(semantic, 0.5, config, np.random.default_rng(3))
    assert [e.to_dict() for e in again.events] == [e.to_dict() for e in result.events]  # deterministic


def test_nearest_reference_wins():
    """Far from the road but beside an existing (axis-aligned) building, a new one follows the building."""
    from conditions.building_placement import Orientations, Roads, align_footprint

    semantic = _road_layout(30, size=256, width_px=8)
    semantic[:60, :] = CANONICAL.class_by_name("low_vegetation").id  # no road in the top rows
    semantic[10:30, 200:240] = CANONICAL.class_by_name("building").id
    instances = (semantic == CANONICAL.class_by_name("building").id).astype(np.int32)
    orientations, roads = Orientations(instances), Roads(semantic, 0.5)
    near_building = align_footprint(200.0, 45.0, 20.0, orientations, roads, 4.0)
    assert near_building.reference == "building" and near_building.angle % (np.pi / 2) < 1e-6
    near_road = align_footprint(128.0, 128.0, 20.0, orientations, roads, 4.0)  # on the road: pushed off it
    assert near_road.reference == "road" and abs(np.degrees(near_road.angle) - 30) < 1.0
    offset = np.hypot(near_road.cx - 128.0, near_road.cy - 128.0)
    assert offset >= 20 / 2 + 4.0  # centre moved half a depth plus the set-back from the road


@pytest.fixture(scope="module")
def oakland():
    """Real OSM layout (West Oakland buildings + roads) on a 1 m UTM grid: canonical ids and instances."""
    from conditions.vector_layouts import load_layer_rules, rasterize_on, utm_grid_at

    layers = [f"buildings:{shared_file('vector/osm_west_oakland/buildings.geojson')}",
              f"roads:{shared_file('vector/osm_west_oakland/roads.geojson')}"]  # fmt: skip
    labels = rasterize_on(load_layer_rules(layers), utm_grid_at(37.8076, -122.3004, 1.0, 256))
    return labels.semantic, labels.instances


def test_real_osm_layout_with_roads_stays_exact(oakland):
    semantic, instances = oakland
    road = semantic == CANONICAL.class_by_name("road").id
    assert road.mean() > 0.05 and instances.max() > 10
    config = ChangeConfig(change_fraction=0.1)
    result = simulate_change(semantic, 1.0, config, np.random.default_rng(4), instances=instances)
    assert np.array_equal(rasterize_events(result.events, semantic.shape), result.change_mask)
    for event in result.events:  # label1/label2 agree with every event's from -> to
        pixels = rasterize_events([event], semantic.shape)
        assert (semantic[pixels] == CANONICAL.class_by_name(event.class_from).id).all()
        assert (result.semantic[pixels] == CANONICAL.class_by_name(event.class_to).id).all()
    added = np.isin(result.instances, [e.instance_id for e in result.events if e.type == "add_building"])
    assert added.any() and not (added & road).any()
    assert {e.aligned_with for e in result.events if e.type == "add_building"} >= {"road"}
    removed = [e.instance_id for e in result.events if e.type == "remove_building"]
    assert removed and all(0 < i <= instances.max() for i in removed)  # OSM footprints (their instance ids)


def test_overlapping_buildings_never_cover_ignore_pixels():
    """allow_overlap lifts the no-overlap rule for roads and buildings, never for ignore pixels: the real
    Potsdam layout (9 % boundary/ignore pixels) used to crash here."""
    from conditions.palettes import IGNORE

    mask = read_mask(shared_file("seg/potsdam/masks/2_10_0_0_512_512.png"), "potsdam")
    semantic = mask.palette.to_canonical(mask.ids)
    assert (semantic == IGNORE).any()
    config = ChangeConfig(change_fraction=0.05, allow_overlap=True, road_setback_m=0)
    for seed in range(2):
        result = simulate_change(semantic, 0.05, config, np.random.default_rng(seed))
        assert result.events and (result.semantic[semantic == IGNORE] == IGNORE).all()
        assert np.array_equal(result.change_mask, rasterize_events(result.events, semantic.shape))


KNOWN_EVENTS = {  # sha256[:16] of (events, layouts before/after, instances, change mask) for seed 0; pinned at
    # 4f1f5fb, re-pinned when event geometries became shapely-normalized (same polygons, canonical vertex order)
    "levir_test_7/default": "80d23268f7b55448", "levir_test_7/all": "eba53ab85658772d",
    "levir_test_7/overlap": "7057d04b2fae79fa", "levir_test_102/default": "f8f30b25d9ab9297",
    "levir_test_102/all": "931c92b936518e8a", "levir_test_102/overlap": "3ca731b20ee0e006",
    "loveda_0/default": "ff4a58fa63cfd1b1", "loveda_0/all": "7f0d92020c9395ba",
    "loveda_0/overlap": "2df25160ca1b1a1d", "loveda_1/default": "a52e454325ace7b4",
    "loveda_1/all": "74c8b918a1770c4e", "loveda_1/overlap": "c9b2451e83b1fdd8",
    "potsdam/default": "a30ac7501c16be3c", "potsdam/all": "8ca02abff8adf181",
    "potsdam/overlap": "a30ac7501c16be3c",
}  # fmt: skip


def test_known_answers_pin_the_events_on_real_layouts():
    """Every event type on five real 512² layouts (LEVIR-CD, LoveDA, Potsdam): the simulator's output is pinned
    exactly, so a refactor or an optimisation must keep every event, label and instance."""
    import hashlib
    import json

    layouts = {}
    for name in ("test_7", "test_102"):
        mask = read_mask(shared_file(f"change/levir_cd_1024/label/{name}.png"), "levir")
        layouts[f"levir_{name}"] = (mask.palette.to_canonical(mask.ids[:512, :512]), 0.5)
    for k, (rows, cols) in enumerate([(slice(0, 512), slice(0, 512)), (slice(512, None), slice(512, None))]):
        mask = read_mask(shared_file(f"seg/loveda/masks/{k}.png"), "loveda")
        layouts[f"loveda_{k}"] = (mask.palette.to_canonical(mask.ids[rows, cols]), 0.3)
    mask = read_mask(shared_file("seg/potsdam/masks/2_10_0_0_512_512.png"), "potsdam")
    layouts["potsdam"] = (mask.palette.to_canonical(mask.ids), 0.05)
    all_events = {"add_building": 0.3, "remove_building": 0.2, "expand_building": 0.2, "shrink_building": 0.1,
                  "transition": 0.2}  # fmt: skip
    configs = {"default": ChangeConfig(change_fraction=0.1),
               "all": ChangeConfig(change_fraction=0.15, events=all_events),
               "overlap": ChangeConfig(change_fraction=0.05, allow_overlap=True, road_setback_m=0)}  # fmt: skip
    got = {}
    for name, (semantic, gsd) in layouts.items():
        for label, config in configs.items():
            r = simulate_change(semantic, gsd, config, np.random.default_rng(0))
            record = json.dumps([e.to_dict() for e in r.events], sort_keys=True, default=str).encode()
            data = record + semantic.tobytes() + r.semantic.tobytes() + r.instances.astype(np.int32).tobytes()
            got[f"{name}/{label}"] = hashlib.sha256(data + r.change_mask.tobytes()).hexdigest()[:16]
    assert got == KNOWN_EVENTS


def test_row_extremes_give_the_same_oriented_rectangle_as_all_pixels():
    """The simulator orients new buildings by cv2.minAreaRect of the first and last pixel of each row of a
    building: on real LEVIR-CD and WHU-CD buildings that is bit-identical to minAreaRect of all its pixels."""
    from conditions.building_placement import row_extremes

    checked = 0
    for path, palette in (
        ("change/levir_cd_1024/label/test_7.png", "levir"),
        ("change/whu_cd/label/000121.png", "levir"),
    ):
        mask = read_mask(shared_file(path), palette)
        instances = building_instances(mask.palette.to_canonical(mask.ids))
        for i in range(1, int(instances.max()) + 1):
            body = instances == i
            ys, xs = np.nonzero(body)
            assert cv2.minAreaRect(row_extremes(body)) == cv2.minAreaRect(np.column_stack([xs, ys]).astype(np.float32))
            checked += 1
    assert checked > 50
