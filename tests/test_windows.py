"""The reference windows (tvm_winograd.windows): the error model of a few whole-tile windows equals the
full layer's error model at those outputs, so a GPU host can judge a kernel without the full reference."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_winograd.accuracy import Precision, error_model
from tvm_winograd.windows import ALIGN, CHANNELS, channel_subset, crop_windows, layer_windows, window_models
from tvm_winograd.workload import make_spec


def test_windows_are_whole_tiles_of_every_packed_m():
    """Windows start at multiples of ALIGN (every packed m divides it) and are disjoint; short axes are
    one window; at most CHANNELS channels, the first and last among them."""
    from tvm_winograd.gpu_pack import TILES

    assert all(ALIGN % m == 0 for m in TILES)
    for extent in (7, 14, 16, 17, 28, 56, 224):
        windows = crop_windows(extent)
        assert all(start % ALIGN == 0 and stop <= extent for start, stop in windows)
        assert windows[-1][1] == extent and (len(windows) == 1 or windows[0][1] <= windows[1][0])
    assert list(channel_subset(10)) == list(range(10))
    wide = channel_subset(512)
    assert len(wide) == CHANNELS and wide[0] == 0 and wide[-1] == 511
    assert layer_windows(make_spec((1, 4, 7, 7), (4, 4, 3, 3), padding=1)) == [(0, (0, 7), (0, 7))]
    assert layer_windows(make_spec((3, 4, 20, 20), (4, 4, 3, 3), padding=1)) == [(0, (0, 8), (0, 8)),
                                                                                  (2, (12, 20), (12, 20))]


@pytest.mark.parametrize("m", [None, 2, 4])
@pytest.mark.parametrize("relu, residual", [(True, False), (True, True), (False, False)])
def test_window_model_equals_the_full_model_at_its_outputs(m, relu, residual):
    """Batch 2, 70 output channels (a subset of 64 is modelled), 21x21 with padding 1 (a partial last
    tile for both m): reference, expected value, bound and sigma of the windows equal the full layer's
    at the same outputs."""
    rng = np.random.default_rng(0)
    spec = make_spec((2, 6, 21, 21), (70, 6, 3, 3), padding=1)
    data = {"x": rng.standard_normal(spec.input_shape).astype("float32"),
            "w": rng.standard_normal(spec.weight_shape).astype("float32"),
            "bias": rng.standard_normal(70).astype("float32")}
    if residual:
        data["residual"] = rng.standard_normal(spec.output_shape).astype("float32")
    full = error_model(data["x"], data["w"], m=m, padding=1, precision=Precision(), bias=data["bias"],
                       residual=data.get("residual"), relu=relu)
    index, windowed = window_models(data, spec, m, Precision(), relu=relu)
    assert index.size == 64 * (8 * 8 + 9 * 9) and len(np.unique(index)) == index.size
    for field in ("reference", "expected", "bound", "sigma"):
        np.testing.assert_allclose(getattr(windowed, field), getattr(full, field).ravel()[index], rtol=1e-12,
                                   atol=1e-300, err_msg=field)
    assert windowed.coherent == (1 if m is None else m * m)


def test_windows_refuse_what_they_cannot_model():
    with pytest.raises(NotImplementedError, match="stride"):
        window_models({}, make_spec((1, 4, 9, 9), (4, 4, 3, 3), padding=1, stride=2), 2, Precision())
