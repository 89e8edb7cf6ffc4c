"""`python -m build` makes a wheel and an sdist of the library alone, which `twine check` accepts; the version
is the one written in wsjax/__init__.py."""

import ast
import email
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

from tests.helpers import REPO

# What a checkout holds besides sources: never part of a build (a stale build/ would leak into the wheel).
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "_build",
    "results",
    "runs",
    "tmp",
)


def _written_version() -> str:
    tree = ast.parse((REPO / "wsjax" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("wsjax/__init__.py assigns no __version__ literal")


def test_the_version_is_written_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml repeats the version"
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "wsjax.__version__"}


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The sdist and the wheel that `python -m build` makes of a clean copy of the checkout."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (sdist,) = (tmp / "dist").glob("wsjax-*.tar.gz")
    (wheel,) = (tmp / "dist").glob("wsjax-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.mark.slow
def test_twine_accepts_the_distributions(distributions):
    # --strict: a warning (a README that would not render, missing metadata) fails too.
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions.values())],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_wheel_holds_only_wsjax(distributions):
    wheel = zipfile.ZipFile(distributions["wheel"])
    names = wheel.namelist()
    version = _written_version()
    metadata_dir = f"wsjax-{version}.dist-info/"
    strays = [n for n in names if not n.startswith(("wsjax/", metadata_dir))]
    assert not strays, f"the wheel installs more than wsjax: {strays}"
    for package in ("wsjax", "wsjax/nnx", "wsjax/models", "wsjax/pretrained"):
        assert f"{package}/__init__.py" in names
    assert "wsjax/py.typed" in names, (
        "type checkers would ignore the library's annotations (PEP 561)"
    )
    metadata = email.message_from_bytes(wheel.read(metadata_dir + "METADATA"))
    assert metadata["Version"] == version
    # Only the extras pull in more than jax and flax.
    required = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in required) == ["flax", "jax"]


@pytest.mark.slow
def test_sdist_holds_the_library_and_what_builds_it(distributions):
    version = _written_version()
    with tarfile.open(distributions["sdist"]) as sdist:
        names = [n.removeprefix(f"wsjax-{version}/") for n in sdist.getnames()]
    top = {n.split("/")[0] for n in names}
    assert top <= {f"wsjax-{version}", "wsjax", "wsjax.egg-info", "PKG-INFO", "setup.cfg",
                   "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"}, top  # fmt: skip
    assert {"pyproject.toml", "README.md", "LICENSE", "wsjax/py.typed"} <= set(names)
