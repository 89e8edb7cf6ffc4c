"""experiments/colab.ipynb: runs top to bottom from this checkout, and on Colab clones the repository first."""

import pathlib
import subprocess
import sys

import pytest

from tests.helpers import REPO, needs_fashion_mnist

pytestmark = pytest.mark.slow
NOTEBOOK = REPO / "experiments" / "colab.ipynb"


@needs_fashion_mnist
def test_colab_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("WSJAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    # A URL that cannot be cloned: in a checkout the first cell must not try.
    monkeypatch.setenv("WSJAX_REPO_URL", "/nonexistent/wsjax.git")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in notebook.cells
        for o in c.get("outputs", [])
    )
    assert f"checkout: {REPO}" in outputs
    assert "final test accuracy: 0." in outputs
    assert any(
        "image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])
    )


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="this tree is not a git checkout")
def test_first_cell_outside_a_checkout_clones_and_installs_from_the_clone(monkeypatch, tmp_path):
    """What the first cell does on Colab, with this repository as the URL and pip recorded, not run."""
    nbformat = pytest.importorskip("nbformat")
    first_cell = next(
        c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"
    )
    if pathlib.Path("/content").is_dir():
        pytest.skip("/content exists: the cell would clone there")
    commands = []
    real_run = subprocess.run

    def run(command, **kwargs):
        commands.append((command, kwargs.get("cwd")))
        if command[:2] == ["git", "clone"]:
            return real_run(command, check=True, capture_output=True)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("WSJAX_REPO_URL", str(REPO))
    exec(compile(first_cell.source, "colab.ipynb", "exec"), {})  # noqa: S102 - our own notebook

    clone = tmp_path / "wsjax"
    assert commands[0] == (["git", "clone", "--depth=1", str(REPO), str(clone)], None)
    assert commands[1] == (
        [sys.executable, "-m", "pip", "install", "-q", "-e", ".[experiments]"],
        clone,
    )
    assert (clone / "experiments" / "train.py").is_file()
    assert pathlib.Path.cwd() == clone and sys.path[0] == str(clone)
