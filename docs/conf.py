"""Sphinx configuration for the alfx documentation.

Why Sphinx (autodoc + napoleon + MyST + furo): JAX, optax, chex and Flax
document themselves with Sphinx, so readers know the look and the
cross-references; autodoc documents the objects alfx actually imports (the
public names of each family package, whatever private module holds them);
napoleon reads the Google-style docstrings; MyST lets the guide pages stay
Markdown (readable on GitHub too); `sphinx-build -W` turns every warning
into an error, so a broken docstring or link fails the build.

Build: sphinx-build -W --keep-going -b html docs docs/_build/html
(needs the `docs` extra: pip install -e ".[docs]").
"""

import alfx

project = "alfx"
author = "The alfx authors"
copyright = "The alfx authors, Apache-2.0"  # pylint: disable=redefined-builtin
release = alfx.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "examples"]

# Docstrings: Google style only; single backticks are Python references
# (`Selection`, `alfx.kbald`), shown as code whether or not they resolve.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
default_role = "py:obj"

autodoc_default_options = {
  "members": True,
  "member-order": "bysource",
  "show-inheritance": False,
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False

# Markdown pages: `#` anchors for headings down to level 3, so that
# `page.md#section` links work here as they do on GitHub.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"alfx {release}"
html_static_path = ["_static"]
html_css_files = ["alfx.css"]


# The public names, by the family package that documents them: `alfx.kbald`
# (the flat name) and a bare `Selection` in a docstring link to the page of
# `alfx.bald_family.kbald` and `alfx.Selection`.
_FAMILIES = (
  "information",
  "bald_family",
  "bait_family",
  "baselines",
  "nn",
  "loop",
)


def _documented_names():
  import importlib  # pylint: disable=import-outside-toplevel

  names = {name: "alfx" for name in alfx.__all__}
  for family in _FAMILIES:
    module = importlib.import_module(f"alfx.{family}")
    for name in module.__all__:
      names[name] = f"alfx.{family}"
  return names


_DOCUMENTED = _documented_names()


def _resolve_flat_name(app, env, node, contnode):
  """Resolves `alfx.name` and a bare `name` to where `name` is documented."""
  if node.get("refdomain") != "py":
    return None
  target = node.get("reftarget", "")
  name = target.removeprefix("alfx.")
  if "." in name or name not in _DOCUMENTED:
    return None
  return env.get_domain("py").resolve_xref(
    env,
    node["refdoc"],
    app.builder,
    node["reftype"],
    f"{_DOCUMENTED[name]}.{name}",
    node,
    contnode,
  )


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Leaves out the "Alias for field number i" members of NamedTuples.

  Their docstrings' ``Attributes:`` sections already describe each field;
  documenting the generated accessors too would describe every field twice.
  """
  del app, what, name, options
  doc = getattr(obj, "__doc__", None) or ""
  if doc.startswith("Alias for field number"):
    return True
  return skip


def setup(app):
  app.connect("missing-reference", _resolve_flat_name)
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
