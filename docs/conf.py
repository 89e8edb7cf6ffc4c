"""Sphinx configuration: the user guide (docs/guide/, Markdown) and the API reference built from wsjax's docstrings.

Build (warnings are errors, as in the tests): ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import importlib
import inspect
import pathlib
import re
import sys

# Document this tree's wsjax, whatever else is installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import wsjax  # noqa: E402

project = "wsjax"
author = "wsjax developers"
copyright = "wsjax developers, Apache 2.0"
release = version = wsjax.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
# The guide is Markdown: $...$ and $$...$$ are math, as in the docstrings' equations.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

# Each page runs `automodule` with `:members:`: a module's `__all__` decides what is documented, so renaming
# the API changes the pages without editing them.
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource"}
autodoc_typehints = "description"  # types beside each argument rather than in a long signature
autodoc_inherit_docstrings = False  # Flax's own docstrings belong to Flax's documentation
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections as fields, not as second descriptions of the dataclass fields.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"wsjax {release}"


def _skip_class_fields(app, what, name, obj, skip, options):
    """Inside a class, documents only wsjax's own methods and properties.

    A Flax module's fields (``dtype``, ``kernel_init``, ...) are its constructor arguments, listed by its
    signature; documented one by one, each would show the docstring of its default value (an initializer, a
    dtype) as if it were its own.
    """
    if what != "class" or skip:
        return skip
    function = obj.fget if isinstance(obj, property) else obj
    own_method = (
        inspect.isfunction(function)
        and "." in function.__qualname__
        and function.__module__.startswith("wsjax")
    )
    return None if own_method else True


# Values (not classes, functions or submodules) in a module's `__all__` that `automodule` leaves out: it documents a
# value only where the module itself assigns it with a doc comment, so re-exports such as `wsjax.PRESETS`
# would silently be missing. `_add_values` appends an `autodata` for each; their docstrings are their
# type's (dict's, tuple's, functools.partial's), not about them, and `_drop_borrowed_docstrings` drops those.
_added_values: set[str] = set()


def _add_values(app, docname, source):
    for module_name in re.findall(r"^\.\. automodule:: (\S+)$", source[0], re.MULTILINE):
        module = importlib.import_module(module_name)
        if not hasattr(module, "__all__"):
            raise RuntimeError(
                f"{module_name} has no __all__, which decides what its page documents"
            )
        commented = {name for _, name in ModuleAnalyzer.for_module(module_name).find_attr_docs()}
        for name in module.__all__:
            value = getattr(module, name)
            if not (
                inspect.isclass(value)
                or inspect.isroutine(value)
                or inspect.ismodule(value)  # a submodule has a page of its own
                or name in commented
            ):
                _added_values.add(f"{module_name}.{name}")
                source[0] += f"\n.. autodata:: {module_name}.{name}\n"


def _drop_borrowed_docstrings(app, what, name, obj, options, lines):
    if name in _added_values:
        lines.clear()


def setup(app):
    app.connect("source-read", _add_values)
    app.connect("autodoc-process-docstring", _drop_borrowed_docstrings)
    app.connect("autodoc-skip-member", _skip_class_fields)
