import numpy as np
import pytest

from msgfm.sensors import S2_L2A_BANDS, SENSORS, get_sensor, partner_of


def test_registry_has_the_four_sensors() -> None:
    assert set(SENSORS) == {"s1", "s2", "rgb", "dsm"}
    assert get_sensor("s1").band_names == ("VV", "VH")
    assert get_sensor("rgb").band_names == ("R", "G", "B")
    assert get_sensor("dsm").band("height").dtype == "float32"


def test_sentinel2_bands_and_resolutions() -> None:
    s2 = get_sensor("s2")
    assert len(s2.bands) == 13 and "B8A" in s2.band_names and "B10" in s2.band_names
    assert len(S2_L2A_BANDS) == 12 and "B10" not in S2_L2A_BANDS
    gsd = {b.name: b.gsd_m for b in s2.bands}
    assert [n for n, g in gsd.items() if g == 10] == ["B02", "B03", "B04", "B08"]
    assert sorted(n for n, g in gsd.items() if g == 60) == ["B01", "B09", "B10"]
    wavelengths = [b.wavelength_nm for b in s2.bands]
    assert wavelengths == sorted(wavelengths)  # canonical order follows wavelength


def test_normalise_roundtrip_and_subset() -> None:
    s2 = get_sensor("s2")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5000, size=(3, 4, 4)).astype(np.float32)
    bands = ["B04", "B03", "B02"]
    z = s2.normalise(x, bands)
    mean, std = s2.stats(bands)
    np.testing.assert_allclose(z[0], (x[0] - s2.band("B04").mean) / s2.band("B04").std, rtol=1e-5)
    np.testing.assert_allclose(s2.denormalise(z, bands), x, rtol=1e-5, atol=1e-2)
    assert mean.shape == std.shape == (3,)


def test_errors_name_the_alternatives() -> None:
    with pytest.raises(KeyError, match="known sensors"):
        get_sensor("landsat")
    with pytest.raises(KeyError, match="B8A"):
        get_sensor("s2").band("B8")
    assert partner_of("s1") == "s2" and partner_of("dsm") == "rgb"


def test_dsm_height_is_normalised_per_chip() -> None:
    dsm = get_sensor("dsm")
    rng = np.random.default_rng(3)
    relief = rng.normal(0, 5, size=(1, 8, 8)).astype(np.float32)
    low, high = dsm.normalise(relief + 20.0), dsm.normalise(relief + 1500.0)
    np.testing.assert_allclose(low, high, atol=1e-3)  # the same relief at any altitude looks the same
    assert abs(float(low.mean())) < 1e-5
    batch = np.stack([relief + 20.0, relief + 900.0])  # (B, C, H, W) works too, chip by chip
    np.testing.assert_allclose(dsm.normalise(batch)[1], low, atol=1e-3)
