"""Task accuracy against labels, scored as upstream's evaluation scores it."""

from __future__ import annotations

import numpy as np
import pytest

from hrmc.parity.agreement import accuracy


def test_accuracy_leaves_out_positions_labelled_minus_100_and_samples_with_none() -> None:
    predicted = np.array([[1, 2, 3], [1, 2, 3], [0, 0, 0]])
    labels = np.array([[1, -100, 3], [1, 2, 4], [-100, -100, -100]])
    # 2 of 2 scored cells right, 2 of 3, and a sample with none scored, left out (upstream's valid_metrics)
    assert accuracy(predicted, labels) == {"cells": pytest.approx((1 + 2 / 3) / 2), "exact": 0.5}
