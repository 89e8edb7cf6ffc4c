"""The wheel is the library alone, and its version is the one written in wsjax/__init__.py."""

import ast
import email
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

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


@pytest.mark.slow
def test_wheel_holds_only_wsjax(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", ".", "-w", str(tmp_path)],
        cwd=source,
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("wsjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    version = _written_version()
    metadata_dir = f"wsjax-{version}.dist-info/"
    strays = [n for n in names if not n.startswith(("wsjax/", metadata_dir))]
    assert not strays, f"the wheel installs more than wsjax: {strays}"
    for package in ("wsjax", "wsjax/nnx", "wsjax/models"):
        assert f"{package}/__init__.py" in names
    metadata = email.message_from_bytes(zipfile.ZipFile(wheel).read(metadata_dir + "METADATA"))
    assert metadata["Version"] == version
    # Only the extras pull in more than jax and flax.
    required = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in required) == ["flax", "jax"]
