import datetime as dt
import math

import pytest
import torch

from conditions import (
    Metadata,
    MetadataEncoder,
    MetadataError,
    gsd_to_text2earth_level,
    text2earth_level_to_gsd,
    to_crsdiff,
    to_diffusionsat,
    to_text2earth_prompt,
    web_mercator_gsd,
)

AMSTERDAM = Metadata(gsd=0.5, lat=52.3, lon=4.9, date="2021-06-15", cloud=0.1, sensor=" NAIP ")


def test_record_normalises_values():
    assert AMSTERDAM.date == dt.date(2021, 6, 15)
    assert AMSTERDAM.sensor == "naip"
    assert list(AMSTERDAM.numeric_fields()) == ["gsd", "lat", "lon", "year", "month", "day", "cloud"]
    assert AMSTERDAM.numeric_fields()["year"] == 2021.0
    assert Metadata().is_unknown and not AMSTERDAM.is_unknown
    assert Metadata.from_dict(AMSTERDAM.to_dict()) == AMSTERDAM


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gsd": 0}, r"metadata\.gsd=0 is outside"),
        ({"gsd": -1.0}, r"metadata\.gsd=-1\.0 is outside"),
        ({"gsd": float("nan")}, r"metadata\.gsd: expected a finite number"),
        ({"gsd": "fine"}, r"metadata\.gsd: expected a number, got 'fine'"),
        ({"lat": 91.0, "lon": 0.0}, r"metadata\.lat=91\.0 is outside its valid range \[-90\.0, 90\.0\]"),
        ({"lat": 10.0, "lon": 200.0}, r"metadata\.lon=200\.0 is outside"),
        ({"lat": 10.0}, r"a location needs both lat and lon"),
        ({"cloud": 1.5}, r"metadata\.cloud=1\.5 is outside its valid range \[0\.0, 1\.0\]"),
        ({"date": "2021-13-01"}, r"expected an ISO date such as 2021-06-01, got '2021-13-01'"),
        ({"date": "1850-01-01"}, r"metadata\.date=1850-01-01 is outside"),
        ({"sensor": "  "}, r"metadata\.sensor: expected a non-empty name"),
        ({"extra": {"gsd": 1.0}}, r"shadows a built-in field"),
    ],
)
def test_record_rejects_bad_values(kwargs, match):
    with pytest.raises(MetadataError, match=match):
        Metadata(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(MetadataError, match=r"unknown key\(s\) \['resolution'\]"):
        Metadata.from_dict({"resolution": 0.5})


def test_diffusionsat_adapter_exact_vector():
    expected = [
        (4.9 + 180) / 360 * 1000,
        (52.3 + 90) / 180 * 1000,
        500.0,
        100.0,
        (2021 - 1980) / 120 * 1000,
        6 / 12 * 1000,
        15 / 31 * 1000,
    ]
    assert to_diffusionsat(AMSTERDAM) == pytest.approx(expected, abs=1e-9)
    assert to_diffusionsat(AMSTERDAM)[:3] == pytest.approx([513.611111, 790.555556, 500.0], abs=1e-5)
    assert to_diffusionsat(Metadata()) == [0.0] * 7


def test_crsdiff_adapter_exact_vector():
    expected = [(2021 - 1980) / 44, 6 / 12, 15 / 31, 0.5 / 5, 10 / 100, (52.3 + 90) / 180, (4.9 + 180) / 360]
    assert to_crsdiff(AMSTERDAM) == pytest.approx(expected, abs=1e-12)
    assert to_crsdiff(AMSTERDAM)[0] == pytest.approx(0.931818, abs=1e-6)
    assert to_crsdiff(Metadata()) == [0.0] * 7


def test_text2earth_levels():
    assert [text2earth_level_to_gsd(level) for level in range(10, 19)] == [128, 64, 32, 16, 8, 4, 2, 1, 0.5]
    assert [gsd_to_text2earth_level(g) for g in (0.5, 0.6, 1.0, 3.0, 128.0)] == [18, 18, 17, 15, 10]
    assert to_text2earth_prompt("a port", Metadata(gsd=2.0)) == "16_GOOGLE_LEVEL_a port"
    with pytest.raises(MetadataError, match=r"outside Text2Earth's 10\.\.18"):
        gsd_to_text2earth_level(1000.0)
    with pytest.raises(MetadataError, match="expected an integer in 10..18"):
        text2earth_level_to_gsd(9)
    with pytest.raises(MetadataError, match="needs a GSD"):
        to_text2earth_prompt("a port", Metadata())
    assert web_mercator_gsd(18) == pytest.approx(0.597164, abs=1e-6)
    assert web_mercator_gsd(18, 60.0) == pytest.approx(0.597164 / 2, abs=1e-6)


@pytest.fixture()
def encoder() -> MetadataEncoder:
    torch.manual_seed(0)
    return MetadataEncoder(embedding_dim=16, frequency_dim=8, hidden_dim=8).eval()


def test_encoder_normalisation_and_errors(encoder):
    prepared = encoder.prepare([AMSTERDAM, None])
    gsd_norm = (math.log(0.5) - math.log(0.05)) / (math.log(500.0) - math.log(0.05))
    assert prepared.values[0, 0].item() == pytest.approx(gsd_norm, abs=1e-6)
    assert prepared.known.tolist() == [[True] * 7, [False] * 7]
    assert prepared.sensor_ids.tolist() == [encoder.sensor_names.index("naip"), len(encoder.sensor_names)]
    with pytest.raises(MetadataError, match=r"metadata\.gsd=1000 m/px is outside the range this model was trained on"):
        encoder.prepare([Metadata(gsd=1000.0)])
    with pytest.raises(MetadataError, match=r"metadata\.sensor='quickbird' is not one this model knows"):
        encoder.prepare([Metadata(sensor="quickbird")])
    with pytest.raises(MetadataError, match=r"not trained with 'ndvi'"):
        encoder.prepare([Metadata(extra={"ndvi": 0.3})])


@torch.no_grad()
def test_encoder_null_embedding_is_unknown_record(encoder):
    null = encoder.encode([None])
    assert torch.equal(null, encoder.encode([Metadata()]))
    expected = encoder.null_embeddings.sum(0) + encoder.sensor_embedding.weight[-1]
    assert torch.allclose(null[0], expected, atol=1e-6)
    known = encoder.encode([AMSTERDAM])
    assert known.shape == (1, 16) and torch.isfinite(known).all()
    assert not torch.allclose(known, null)
    # A batch is the stack of its rows.
    batch = encoder.encode([AMSTERDAM, None, Metadata(gsd=10.0)])
    assert torch.allclose(batch[0], known[0], atol=1e-6) and torch.allclose(batch[1], null[0], atol=1e-6)


def test_encoder_save_load_round_trip(encoder, tmp_path):
    encoder.save_pretrained(tmp_path)
    loaded = MetadataEncoder.from_pretrained(tmp_path).eval()
    assert loaded.schema() == encoder.schema()
    with torch.no_grad():
        # Weights are equal bit for bit; the forward may differ in the last ulp (memory layout).
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values()))
        assert torch.allclose(loaded.encode([AMSTERDAM]), encoder.encode([AMSTERDAM]), atol=1e-6)
