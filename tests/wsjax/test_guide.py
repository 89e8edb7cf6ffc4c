"""The guide's and the README's snippets run, and the commands they give name modules and files that exist.

Each page's ``python`` blocks run in order in one namespace (as a reader would paste them), in a temporary
folder; a page whose snippets read files or a package CI does not install gets them from its fixture below.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types

import pytest

from tests.helpers import REPO

GUIDE = REPO / "docs" / "guide"
PAGES = sorted(GUIDE.glob("*.md"))
DOCUMENTS = [REPO / "README.md", *PAGES]


def python_blocks(page) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def shell_lines(page) -> list[str]:
    """The commands of a page's ``bash`` blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        lines += [line.split("#", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line]


def test_the_guide_has_its_pages():
    names = {page.stem for page in PAGES}
    assert {
        "conventions",
        "layers",
        "normalization",
        "models",
        "training",
        "study",
        "testing",
    } <= names
    index = (REPO / "docs" / "index.rst").read_text()
    for page in PAGES:
        assert f"guide/{page.stem}" in index, f"{page.name} is not in the guide's table of contents"


# Pages whose snippets build full-size networks (VGG16, ResNet-50): seconds each, so in the slow tier.
_SLOW_PAGES = {"layers", "models"}


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=[pytest.mark.slow] if p.stem in _SLOW_PAGES else [])
        for p in PAGES
        if python_blocks(p)
    ],
    ids=lambda p: p.stem,
)
def test_a_pages_python_snippets_run(page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    fixture = f"{page.stem}_page"
    if fixture in _PAGE_FIXTURES:
        namespace.update(request.getfixturevalue(fixture))
    for i, code in enumerate(python_blocks(page)):
        exec(compile(code, f"{page.name} (python block {i + 1})", "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_the_commands_name_modules_and_files_that_exist(document):
    for line in shell_lines(document):
        for module in re.findall(r"python -m ([\w.]+)", line):
            if module.split(".")[0] in ("experiments", "wsjax", "pytest", "sphinx", "venv", "pip"):
                assert importlib.util.find_spec(module) is not None, (
                    f"{document.name}: `{line}` runs {module}, which does not exist"
                )
        for path in re.findall(
            r"(?<![\w/])((?:experiments|scripts|wsjax)/[\w/.-]+\.(?:py|sh))", line
        ):
            assert (REPO / path).is_file(), (
                f"{document.name}: `{line}` names {path}, which does not exist"
            )
    for path in re.findall(
        r"`((?:experiments|wsjax|scripts|tests)/[\w/.-]+\.(?:py|sh|ipynb))`", document.read_text()
    ):
        assert (REPO / path).is_file(), f"{document.name} names {path}, which does not exist"


class _Tensor:
    """What ``torch.load`` returns per entry, as far as the snippets use it."""

    def __init__(self, array):
        self.array = array

    def numpy(self):
        return self.array


@pytest.fixture
def models_page(tmp_path, monkeypatch):
    """The checkpoints the models page loads, made from random weights in each source's names; torch and
    safetensors (not installed for the tests) stand in as modules that read them."""
    import jax.numpy as jnp
    import numpy as np

    from tests.helpers import flax_to_bit, flax_to_timm, random_params
    from tests.official_reference import Spec, state_dict
    from wsjax.models import resnetv2

    x = jnp.zeros((1, 64, 64, 3))
    timm = flax_to_timm(random_params(resnetv2(50, 1), x))
    np.savez(
        tmp_path / "BiT-M-R50x1.npz",
        **flax_to_bit(random_params(resnetv2(50, 1, num_classes=10), x)),
    )
    files = {
        "R-50-GN-WS.pth.tar": {"state_dict": state_dict(Spec(kind="gn"))},
        "r50x1.pth": timm,
        "model.safetensors": timm,
    }
    torch = types.ModuleType("torch")
    torch.load = lambda path, **_: _as_tensors(files[path])
    safetensors = types.ModuleType("safetensors")
    safetensors.numpy = types.ModuleType("safetensors.numpy")
    safetensors.numpy.load_file = lambda path: dict(files[path])
    for name, module in [
        ("torch", torch),
        ("safetensors", safetensors),
        ("safetensors.numpy", safetensors.numpy),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    return {"images_nhwc": np.zeros((2, 64, 64, 3), np.float32)}


def _as_tensors(checkpoint):
    """``torch.load``'s view of a checkpoint: tensors, under "state_dict" where the file has one."""
    if "state_dict" in checkpoint:
        return {"state_dict": _as_tensors(checkpoint["state_dict"])}
    return {k: _Tensor(v) for k, v in checkpoint.items()}


_PAGE_FIXTURES = {"models_page"}
