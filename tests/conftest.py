"""Shared fixtures: seeded generators and the default llvm target."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture
def signed(rng: np.random.Generator):
    """``signed(shape, dtype)``: signed standard-normal data (all-positive inputs would hide
    cancellation error), from the test's seeded generator."""

    def make(shape, dtype: str = "float32") -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    return make
