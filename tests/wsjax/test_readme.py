"""The README's API example runs as written; its commands are the ones the scripts and CI run."""

import os
import re

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_readme_api_example_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The API in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["logits"].shape == (2, 10)
    assert namespace["w_hat"].shape == (3, 3, 16, 64)


def _two_commands() -> list[str]:
    section = (REPO / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_two_commands_are_the_entry_scripts():
    train, test = _two_commands()
    assert train.startswith("./train --config ") and test == "./test"
    config = train.split("--config ", 1)[1].split()[0]
    assert (REPO / config).is_file(), f"the README trains {config}, which does not exist"
    for script in ("train", "test", "scripts/in_venv"):
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"


def test_ci_runs_everything_the_readme_names():
    _, test = _two_commands()
    readme = (REPO / "README.md").read_text()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    # The README's fast loop is ./test; CI runs ./test --all, which the README names as everything.
    assert f"{test} --all" in ci_lines and f"`{test} --all`" in readme
    script = (REPO / "test").read_text()
    assert "python -m pytest -n 2" in script and '"not slow"' in script


def test_readme_names_the_docs_build_the_tests_run():
    readme = (REPO / "README.md").read_text()
    assert "sphinx-build -W --keep-going -b html docs docs/_build/html" in readme
    assert "docs/_build/" in (REPO / ".gitignore").read_text().splitlines()
