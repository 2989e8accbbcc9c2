"""The zero-scale fallback: no steered feature is silently left unpushed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from featsweep.engines.intervention import fill_zero_scales


def test_zero_scales_get_the_task_max_then_the_median():
    gen_max = np.array([0.0, 2.0, 0.0, 4.0, 0.0, 0.0])
    # feature 0 is active on the task (max 0.7); feature 2 is not; feature 4 is not steered
    attrs = SimpleNamespace(table=pd.DataFrame({"feature": [0, 0, 1, 3], "activation": [0.5, 0.7, 1.0, 3.0]}))
    scales, n_zero = fill_zero_scales(gen_max, [0, 1, 2, 3, 3], attrs)
    assert n_zero == 2
    np.testing.assert_allclose(scales, [0.7, 2.0, np.median([0.7, 2.0, 4.0]), 4.0, 0.0, 0.0])
    assert gen_max[0] == 0.0  # the input is not changed
    same, none = fill_zero_scales(gen_max, [1, 3], attrs)
    assert none == 0 and np.array_equal(same, gen_max)
