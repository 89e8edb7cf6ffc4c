"""./train and ./test create the environment on first use, reinstall when pyproject.toml changes, fail loudly.

The environment's Python is a stand-in that records what it is asked to do (and hands `-c` snippets to this
Python), so that these tests check scripts/in_venv's decisions in milliseconds without installing anything.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$1" in
  --version) echo "Python 3.99.0" ;;
  -c) exec "$REAL_PYTHON" "$@" ;;
  -m)
    case "$2" in
      venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
      pip) if [[ "$*" == *" -e "* ]]; then exit "${FAKE_PIP_RC:-0}"; fi ;;  # fails the project's install only
      *) echo "ran: $* | cwd: $PWD | PYTHONPATH: $PYTHONPATH"; exit "${FAKE_RUN_RC:-0}" ;;
    esac ;;
esac
"""


@pytest.fixture
def env(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return {
        **os.environ,
        "PYTHON": str(fake),
        "REAL_PYTHON": sys.executable,
        "WSJAX_VENV": str(tmp_path / "venv"),
        "FAKE_LOG": str(tmp_path / "log"),
    }


def run(script: str, args: list[str], env: dict, cwd: pathlib.Path):
    pathlib.Path(env["FAKE_LOG"]).write_text("")
    result = subprocess.run(
        [str(REPO / script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    return result, pathlib.Path(env["FAKE_LOG"]).read_text().splitlines()


def test_first_use_creates_and_installs_then_runs_pytest_from_the_repository(env, tmp_path):
    result, log = run("test", ["-q", "tests/wsjax/test_readme.py"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"-m venv {tmp_path / 'venv'}" in log
    assert "-m pip install -e .[test]" in log
    assert "first use" in result.stderr and "pip install -e '.[test]'" in result.stderr
    assert (
        f"ran: -m pytest -n 2 -m not slow -q tests/wsjax/test_readme.py | cwd: {REPO} |"
        in result.stdout
    )
    assert (tmp_path / "venv" / "wsjax-installed").exists()

    # Second use: nothing to install.
    result, log = run("test", [], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not [line for line in log if line.startswith("-m venv") or line.startswith("-m pip")]
    assert "ran: -m pytest -n 2 -m not slow |" in result.stdout

    # --all: every test, the caller's arguments after it.
    result, _ = run("test", ["--all", "-x"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ran: -m pytest -n 2 -x |" in result.stdout


def test_a_changed_pyproject_reinstalls(env, tmp_path):
    run("test", [], env, cwd=tmp_path)
    (tmp_path / "venv" / "wsjax-installed").write_text("an older pyproject.toml's hash\n")
    result, log = run("test", [], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "-m pip install -e .[test]" in log and "-m venv" not in "\n".join(log)
    assert "pyproject.toml" in result.stderr and "changed" in result.stderr


def test_train_runs_from_any_directory_with_the_checkout_importable(env, tmp_path):
    result, _ = run("train", ["--config", "c.py", "--workdir", "w"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The caller's directory is kept (relative paths are theirs); experiments/ is found on PYTHONPATH.
    assert (
        f"ran: -m experiments.train --config c.py --workdir w | cwd: {tmp_path} | PYTHONPATH: {REPO}"
        in (result.stdout)
    )


def test_a_failed_install_stops_loudly_and_is_retried(env, tmp_path):
    env["FAKE_PIP_RC"] = "1"
    result, _ = run("test", [], env, cwd=tmp_path)
    assert result.returncode != 0
    assert "error: pip install -e '.[test]'" in result.stderr
    assert "ran:" not in result.stdout
    assert not (tmp_path / "venv" / "wsjax-installed").exists()
    env["FAKE_PIP_RC"] = "0"
    result, log = run("test", [], env, cwd=tmp_path)
    assert result.returncode == 0 and "-m pip install -e .[test]" in log


def test_the_command_s_exit_status_is_the_script_s(env, tmp_path):
    env["FAKE_RUN_RC"] = "3"
    assert run("test", [], env, cwd=tmp_path)[0].returncode == 3


def test_a_missing_python_is_named(env, tmp_path):
    env["PYTHON"] = str(tmp_path / "no-such-python")
    result, _ = run("train", [], env, cwd=tmp_path)
    assert result.returncode != 0 and "no-such-python' not found" in result.stderr
