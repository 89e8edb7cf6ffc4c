"""The README's API example runs as written."""

import re

from tests.helpers import REPO


def test_readme_api_example_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The API in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["logits"].shape == (2, 10)
    assert namespace["w_hat"].shape == (3, 3, 16, 64)


def test_readme_names_the_ci_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    command = "python -m pytest -n 2"
    assert command in readme and command in ci
