"""Change-event simulation: reproducible, exact labels, on real LEVIR and LoveDA layouts."""

import numpy as np
import pytest
import rasterio

from conditions.change_events import ChangeConfig, ChangeError, rasterize_events, simulate_change
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
