"""`kvmtest model`: the model's tables and state graph, generated from the model itself."""

import subprocess
import sys

import reference
from reference import describe


def kvmtest(*args):
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", "model", *args], capture_output=True, text=True
    )


def test_dot_is_the_models_state_graph():
    result = kvmtest("--format", "dot", "--profile", "linux-3.9")
    assert result.returncode == 0
    assert result.stdout == describe.state_graph_dot("linux-3.9")
    assert result.stdout.startswith('digraph "linux-3.9"') and "SIPI_RECEIVED" in result.stdout
    assert "SIPI_RECEIVED" not in kvmtest("--format", "dot").stdout  # abolished by the patch


def test_table_and_profiles():
    table = kvmtest("--profile", "mainline").stdout
    assert table == describe.transition_table("mainline")
    profiles = kvmtest("--format", "profiles").stdout
    assert all(f"`{name}`" in profiles for name in reference.PROFILES)


def test_unknown_profile_is_a_usage_error():
    result = kvmtest("--profile", "linux-0.1")
    assert result.returncode == 2 and "unknown profile" in result.stderr
