"""The API reference (docs/) builds from the docstrings with no warning and documents every public name."""

import importlib
import inspect
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """Builds the docs as the README says, warnings failing, into a temporary folder."""
    out = tmp_path_factory.mktemp("docs")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(out / "doctrees"), str(REPO / "docs"), str(out / "html")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return out / "html"


def test_every_public_name_is_documented(html):
    pages = sorted((REPO / "docs" / "api").glob("*.rst"))
    documented, submodules = set(), set()
    for page in pages:
        text = (html / "api" / page.with_suffix(".html").name).read_text()
        for module_name in re.findall(r"^\.\. automodule:: (\S+)$", page.read_text(), re.MULTILINE):
            documented.add(module_name)
            module = importlib.import_module(module_name)
            missing = []
            for name in module.__all__:
                if inspect.ismodule(getattr(module, name)):
                    submodules.add(f"{module_name}.{name}")  # documented by a page of its own
                elif f'id="{module_name}.{name}"' not in text:
                    missing.append(name)
            assert not missing, (
                f"{page.name}: {module_name}.__all__ names without an entry: {missing}"
            )
    assert {"wsjax", "wsjax.nnx", "wsjax.models"} <= documented
    assert submodules <= documented, f"public submodules without a page: {submodules - documented}"
    assert "conv_general_dilated" in (html / "api" / "cpu.html").read_text()


def test_the_guide_renders_the_equations_as_math(html):
    conventions = (html / "guide" / "conventions.html").read_text()
    normalization = (html / "guide" / "normalization.html").read_text()
    # MathJax typesets these in the browser; Sphinx's part is to emit them as math, not as text.
    assert conventions.count('class="math') >= 10
    assert r"\sqrt{\sigma_o^2 + \epsilon}" in conventions  # WS, the default convention
    assert r"\mathrm{BCN}(x) = \mathrm{CN}(\mathrm{EBN}(x))" in normalization
    for preset in ("pytorch", "qiao", "bit", "timm"):
        assert (
            f'<code class="docutils literal notranslate"><span class="pre">{preset}</span>'
            in conventions
        )
    assert "microbatch.png" in (html / "guide" / "study.html").read_text()
