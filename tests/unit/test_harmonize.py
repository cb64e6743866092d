"""ComBat's learn/apply split against neuroCombat, and its handling of unseen sites."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpnbids.exceptions import InputError
from dpnbids.learn.harmonize import CombatFit, apply_combat, fit_combat

#: neuroCombat 0.2.12 on 30 subjects x 40 features, 3 sites, age protected
#: (neuroCombat(dat=x.T, covars={site, age}, batch_col="site", continuous_cols=["age"])).
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "combat_reference.npz"


def test_fit_combat_matches_neurocombat():
    ref = np.load(REFERENCE)
    fit = fit_combat(ref["x"], ref["sites"], ref["age"][:, None], shrink="location+scale")
    out, unseen = apply_combat(fit, ref["x"], ref["sites"], ref["age"][:, None])
    assert unseen == []
    # neuroCombat stops each site's EB iteration at a relative change of 1e-4
    np.testing.assert_allclose(out, ref["harmonized"], atol=1e-3)
    np.testing.assert_allclose(fit.gamma_star, ref["gamma_star"], atol=1e-3)
    np.testing.assert_allclose(fit.delta_star, ref["delta_star"], rtol=1e-3)


def test_apply_is_frozen_and_removes_site_location_and_scale(rng):
    sites = np.repeat(["a", "b"], 20)
    x = rng.normal(0, 1, (40, 300))
    x[sites == "b"] = 3.0 + 2.0 * x[sites == "b"]
    train = np.r_[0:15, 20:35]
    fit = fit_combat(x[train], sites[train], shrink="none")
    out, unseen = apply_combat(fit, x, sites)
    assert unseen == []
    test_a, test_b = out[15:20], out[35:40]
    assert abs(test_b.mean() - test_a.mean()) < 0.3      # was 3
    assert 0.6 < test_b.std() / test_a.std() < 1.6       # was 2
    # applying the frozen fit to the training subjects again changes nothing
    again, _ = apply_combat(CombatFit.from_arrays(fit.to_arrays()), x[train], sites[train])
    np.testing.assert_allclose(again, out[train])


def test_unseen_site_uses_the_pooled_estimates_and_is_reported(rng):
    sites = np.repeat(["a", "b"], 10)
    x = rng.normal(0, 1, (20, 50)) + (sites == "b")[:, None] * 2.0
    fit = fit_combat(x, sites)
    new = rng.normal(0, 1, (3, 50))
    out, unseen = apply_combat(fit, new, ["c", "c", "a"])
    assert unseen == ["c"]
    assert np.isfinite(out).all()
    # gamma = 0, delta = 1: an unseen site's subjects keep their values (no site correction),
    # while a known site's subject is corrected
    np.testing.assert_allclose(out[:2], new[:2])
    assert not np.allclose(out[2], new[2])


def test_combat_refuses_one_site_or_a_single_subject_site(rng):
    x = rng.normal(0, 1, (6, 5))
    with pytest.raises(InputError, match="at least two sites"):
        fit_combat(x, ["a"] * 6)
    with pytest.raises(InputError, match="per site"):
        fit_combat(x, ["a"] * 5 + ["b"])
