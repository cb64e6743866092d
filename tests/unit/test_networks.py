"""Network templates from offline coordinates and component labelling."""
from __future__ import annotations

import numpy as np
import pytest

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.analysis.networks import (load_network_coordinates, match_networks, network_templates,
                              render_gaussians)

CORE = {"cerebellar", "default_mode", "fronto_parietal", "sensorimotor", "visual"}


@pytest.mark.parametrize("atlas,n_rois", [("seitzman", 285 + 18), ("dosenbach", 160)])
def test_coordinates_have_canonical_names(atlas, n_rois):
    df = load_network_coordinates(atlas)
    assert list(df.columns) == ["x", "y", "z", "network"]
    assert len(df) == n_rois
    assert CORE <= set(df["network"])
    assert df["network"].notna().all()
    assert all(n == n.lower() and " " not in n and "-" not in n for n in df["network"])
    # MNI brain bounds
    assert df["x"].abs().max() < 80 and df["z"].min() > -60


def test_unknown_atlas_and_network():
    with pytest.raises(InputError, match="Unknown network atlas"):
        load_network_coordinates("power")
    with pytest.raises(InputError, match="available"):
        network_templates((np.diag([4.0, 4, 4, 1]), (7, 8, 9)), networks=["limbic"])


def test_gaussian_peaks_at_centres_on_unequal_oblique_grid():
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.5, 3.0])
    affine[:3, 3] = [-10, -12, -13]
    shape = (17, 18, 19)
    vox = np.array([[5, 6, 7], [12, 10, 11]])
    coords = vox @ affine[:3, :3].T + affine[:3, 3]
    vol = render_gaussians(coords, affine, shape, sigma_mm=3.0)
    assert vol.shape == shape
    for v in vox:
        assert vol[tuple(v)] == pytest.approx(1.0)
        # strictly decreasing away from the centre
        assert vol[v[0] + 1, v[1], v[2]] < 1.0
    assert vol.max() == pytest.approx(1.0)
    assert vol[0, 0, 0] < 1e-3


@pytest.mark.parametrize("res", [4.0, 2.0])
def test_templates_on_mni_grid(res):
    from dpnbids.templates import load_template

    ref = load_template("MNI152NLin2009aSym", res, "mask")
    img, names = network_templates(ref, networks=sorted(CORE))
    assert names == sorted(CORE)
    assert img.shape == ref.shape[:3] + (5,)
    np.testing.assert_allclose(img.affine, ref.affine)
    data = np.asarray(img.dataobj)
    assert data.max() <= 1.0 and data.min() >= 0.0
    inv = np.linalg.inv(ref.affine)
    df = load_network_coordinates()
    for i, name in enumerate(names):
        xyz = df.loc[df["network"] == name, ["x", "y", "z"]].to_numpy()
        ijk = np.rint(xyz @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        vals = data[ijk[:, 0], ijk[:, 1], ijk[:, 2], i]
        # every ROI centre is within half a voxel diagonal of a voxel centre
        worst = np.exp(-(3 * (res / 2) ** 2) / (2 * 6.0**2))
        assert vals.min() >= worst - 1e-6
    # the networks are spatially distinct
    flat = data.reshape(-1, 5).T
    r = np.corrcoef(flat)
    assert np.max(r[~np.eye(5, dtype=bool)]) < 0.5


def test_templates_respect_mask():
    from dpnbids.templates import load_template

    ref = load_template("MNI152NLin2009aSym", 4.0, "mask")
    mask = np.asarray(ref.dataobj) > 0
    img, _ = network_templates(ref, networks=["visual"], mask=ref)
    assert np.all(np.asarray(img.dataobj)[~mask] == 0)
    with pytest.raises(DimensionError, match="resample the mask"):
        network_templates(ref, networks=["visual"], mask=mask[:-1])


def test_match_networks_labels_noisy_templates(rng):
    from dpnbids.templates import load_template

    ref = load_template("MNI152NLin2009aSym", 4.0, "mask")
    mask = np.asarray(ref.dataobj) > 0
    img, names = network_templates(ref)
    tpl = np.asarray(img.dataobj)[mask].T  # (N, V)
    order = rng.permutation(len(names))[:6]
    comps = tpl[order] + rng.normal(0, 0.1, (6, tpl.shape[1]))
    noise_only = rng.normal(0, 1, (1, tpl.shape[1]))
    table = match_networks(np.vstack([comps, noise_only]), tpl, names)
    assert list(table.columns) == ["component", "network", "spatial_r", "dice", "matched"]
    assert list(table["component"]) == list(range(7))
    assert list(table["network"][:6]) == [names[i] for i in order]
    assert table["matched"][:6].all() and (table["spatial_r"][:6] > 0.4).all()
    assert (table["dice"][:6] > 0.15).all()
    assert table["network"][6] == "unmatched" and not table["matched"][6]
    # a sign-flipped component is not matched: r is signed
    flipped = match_networks(-comps[:1], tpl, names)
    assert flipped["network"][0] != names[order[0]] or not flipped["matched"][0]


def test_match_networks_dimension_errors():
    with pytest.raises(DimensionError, match="voxels"):
        match_networks(np.zeros((3, 10)), np.ones((2, 11)), ["a", "b"])
    with pytest.raises(DimensionError, match="names"):
        match_networks(np.zeros((3, 10)), np.ones((2, 10)), ["a"])
    with pytest.raises(DimensionError, match="2D"):
        match_networks(np.zeros(10), np.ones((2, 10)), ["a", "b"])
