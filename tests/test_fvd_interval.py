import numpy as np
import pytest

from vidtwin_gen.evaluation.fvd import (
    _frechet_distance_eigh,
    feature_statistics,
    format_fvd_interval,
    frechet_distance,
    fvd_bootstrap,
    fvd_from_features,
)


def gaussian_sets(n, dim=8, shift=0.5, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, dim))
    generated = rng.standard_normal((n, dim)) * 1.2 + shift
    return real, generated


def test_eigh_form_matches_sqrtm_form():
    real, generated = gaussian_sets(300, dim=32)
    stats = (*feature_statistics(real), *feature_statistics(generated))
    assert _frechet_distance_eigh(*stats) == pytest.approx(frechet_distance(*stats), rel=1e-8)


def test_interval_contains_estimate_and_reports_counts():
    real, generated = gaussian_sets(400)
    out = fvd_bootstrap(real, generated, num_resamples=200, seed=0)
    assert out["fvd"] == fvd_from_features(real, generated)
    assert out["low"] < out["fvd"] < out["high"]
    assert (out["num_real"], out["num_generated"], out["num_resamples"], out["confidence"]) == (400, 400, 200, 0.95)
    # Expected FVD here: 8 * 0.5^2 + 8 * (1.2 - 1)^2 = 2.32; the estimate and interval are near it.
    assert out["low"] < 2.32 * 1.5 and out["high"] > 2.32 * 0.7
    line = format_fvd_interval(out)
    assert line.startswith(f"FVD {out['fvd']:.1f} (95% interval {out['low']:.1f}-{out['high']:.1f}; 400 real vs 400 generated")


def test_interval_narrows_with_more_samples_and_with_lower_confidence():
    small = fvd_bootstrap(*gaussian_sets(100), num_resamples=100)
    large = fvd_bootstrap(*gaussian_sets(2000), num_resamples=100)
    assert large["high"] - large["low"] < 0.5 * (small["high"] - small["low"])
    narrow = fvd_bootstrap(*gaussian_sets(100), num_resamples=100, confidence=0.5)
    assert narrow["high"] - narrow["low"] < small["high"] - small["low"]


def test_bias_is_reported_and_large_for_few_samples_in_many_dimensions():
    # Same distribution: the true FVD is 0, all of the estimate is small-sample bias.
    rng = np.random.default_rng(1)
    real, generated = rng.standard_normal((60, 40)), rng.standard_normal((60, 40))
    out = fvd_bootstrap(real, generated, num_resamples=50)
    assert out["bias"] > 0.3 * out["fvd"] > 0
    assert out["low"] >= 0


def test_deterministic_with_seed():
    sets = gaussian_sets(150)
    a, b = fvd_bootstrap(*sets, num_resamples=50, seed=3), fvd_bootstrap(*sets, num_resamples=50, seed=3)
    c = fvd_bootstrap(*sets, num_resamples=50, seed=4)
    assert a == b
    assert (a["low"], a["high"]) != (c["low"], c["high"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"real_features": np.zeros((1, 4))}, "real_features"),
        ({"generated_features": np.zeros((5, 3))}, "dimension"),
        ({"generated_features": np.zeros(5)}, "generated_features"),
        ({"num_resamples": 1}, "num_resamples"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_input_raises(kwargs, match):
    real, generated = gaussian_sets(10, dim=4)
    arguments = {"real_features": real, "generated_features": generated, "num_resamples": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        fvd_bootstrap(**arguments)


def test_interval_is_centred_on_the_estimate_when_resampling_bias_is_large():
    # 300 clips in 100 dimensions: resamples run ~16 above the estimate (24), so the raw percentile interval
    # (about 39..43) would exclude it; the reported one is shifted by the bootstrap bias estimate.
    rng = np.random.default_rng(0)
    real, generated = rng.standard_normal((300, 100)), rng.standard_normal((300, 100)) * 1.1 + 0.2
    out = fvd_bootstrap(real, generated, num_resamples=100)
    assert out["bias"] > 0.3 * out["fvd"]
    assert out["low"] < out["fvd"] < out["high"]
    assert out["low"] + out["bias"] > out["fvd"]  # the unshifted interval lies above the estimate
