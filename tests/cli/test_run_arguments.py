"""Out-of-range numbers and unwritable report paths are usage errors before the run, never a
traceback after it (the Reliability issue's smaller defects)."""

import pytest

from tests.cli.test_run import kvmtest


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "0", "-1", "soon"])
def test_timeout_must_be_a_finite_positive_number(value):
    result = kvmtest("run", "--backend", "reference", "--timeout", value)
    assert result.returncode == 2 and "--timeout" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["1e12", "-5", "nan"])
def test_jitter_is_bounded(value):
    result = kvmtest("run", "--backend", "reference", "--jitter", value)
    assert result.returncode == 2 and "--jitter" in result.stderr


@pytest.mark.parametrize("option", ["--junit-xml", "--json-file"])
def test_an_unwritable_report_path_is_refused_before_the_run(option, tmp_path):
    result = kvmtest("run", "--backend", "reference", option, str(tmp_path / "no" / "x"))
    assert result.returncode == 2
    assert "cannot write there" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing ran
