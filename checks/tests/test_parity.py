"""checks.compare / assert_parity: report the errors, catch a wrong result, name where it is."""

import numpy as np
import pytest
import torch

from checks import ParityError, assert_parity, compare


def test_report_matches_independent_error_computation(measure):
    """max abs and max rel error equal torch's own elementwise computation."""
    torch.manual_seed(0)
    ref = torch.randn(5, 7, dtype=torch.float64)
    ours = ref + 1e-9 * torch.randn(5, 7, dtype=torch.float64)
    report = measure.parity(assert_parity(ours, ref, atol=1e-8, name="noisy"))
    assert report.max_abs_err == pytest.approx(float((ours - ref).abs().max()), rel=1e-12)
    assert report.max_rel_err == pytest.approx(float(((ours - ref).abs() / ref.abs()).max()), rel=1e-12)
    assert report.ok and report.shape == (5, 7)


def test_wrong_result_is_caught_and_located():
    """One wrong element fails; the error names its index and both values."""
    ref = torch.arange(12.0).reshape(3, 4)
    ours = ref.clone()
    ours[2, 1] += 0.5
    with pytest.raises(ParityError) as info:
        assert_parity(ours, ref, atol=1e-6, name="arange")
    message = str(info.value)
    assert "(2, 1)" in message and "ours 9.5" in message and "reference 9" in message
    assert "1 of 12" in message


def test_float32_vs_float64_reference_within_float32_rounding():
    """A float32 result against a float64 reference: compared in float64, error at float32 eps scale."""
    x = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    report = compare(torch.exp(x.float()), torch.exp(x), atol=0, rtol=1e-6)
    assert report.ok
    assert 0 < report.max_rel_err < 2 * np.finfo(np.float32).eps


def test_rtol_scales_with_the_reference():
    """rtol follows torch.testing.assert_close's rule |a-b| <= atol + rtol*|b|."""
    ref = torch.tensor([1e6, 1.0], dtype=torch.float64)
    ours = ref + torch.tensor([0.5, 0.0], dtype=torch.float64)
    assert compare(ours, ref, atol=1e-3, rtol=1e-6).ok
    assert not compare(ours, ref, atol=1e-3, rtol=1e-7).ok
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-7)


def test_shape_and_nan_mismatches_are_errors():
    """Shapes must match exactly (no broadcasting), and NaNs must sit in the same places."""
    with pytest.raises(ParityError, match="shape mismatch"):
        compare(torch.zeros(3), torch.zeros(1, 3), atol=1)
    with pytest.raises(ParityError, match="NaN"):
        compare(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), atol=1)
    assert compare(torch.tensor([float("nan")]), torch.tensor([float("nan")]), atol=0).ok
