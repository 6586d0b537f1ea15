"""The host-side input normalisations against their textbook formulas."""

import numpy as np
import pytest

from benchmarks.preprocess import FORMULAS  # the textbook formulas, as the benchmark's baseline
from segbeam.preprocessing import preprocess


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_each_preset_computes_its_formula_and_leaves_the_batch_alone(name, dtype):
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, size=(2, 5, 7, 3)).astype(dtype)
    before = batch.copy()
    expected = FORMULAS[name](batch.astype(np.float64))
    result = preprocess(batch, name)
    assert result.dtype == np.float32 and result.shape == batch.shape
    assert result.flags.c_contiguous
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(batch, before)


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown preprocessing 'imagenet'; expected one of "
                       "none, scale_0_1"):
        preprocess(np.zeros((1, 2, 2, 3), np.uint8), "imagenet")
