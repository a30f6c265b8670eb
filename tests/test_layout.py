"""The package layout: no private reach-ins, short files, one public API.

These read alfx's source with `ast` (nothing is imported but alfx itself), so
they are cheap and run in the default suite.
"""

import ast
import importlib
import pathlib
import pkgutil
import types

import pytest

import alfx

PACKAGE = pathlib.Path(alfx.__file__).parent

#: The longest a module may be (CONTRIBUTING.md: "short enough to read in
#: one sitting").
MAX_LINES = 600

#: Family packages: every name of `alfx.__all__` is also importable from one.
FAMILIES = (
  "information",
  "bald_family",
  "bait_family",
  "baselines",
  "nn",
  "loop",
)


def _modules():
  return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _is_module(dotted: str) -> bool:
  try:
    return importlib.util.find_spec(dotted) is not None
  except ModuleNotFoundError:
    return False


def _private_reach_ins(path: pathlib.Path) -> list[str]:
  """Uses of another module's ``_name`` (not a module) in ``path``.

  Catches ``from alfx.x import _name`` and ``mod._name`` where ``mod`` is
  bound by an import of an alfx module. Module names may be private
  (``from alfx._core import pool as _pool``): what is shared between
  modules is named without an underscore inside its private module.
  """
  tree = ast.parse(path.read_text(), str(path))
  found, aliases = [], {}
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.ImportFrom)
      and node.module
      and (node.module == "alfx" or node.module.startswith("alfx."))
    ):
      for a in node.names:
        dotted = f"{node.module}.{a.name}"
        if _is_module(dotted):
          aliases[a.asname or a.name] = dotted
        elif a.name.startswith("_"):
          found.append(
            f"{path.name}:{node.lineno}: from {node.module} import {a.name}"
          )
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("alfx"):
          aliases[a.asname or a.name.split(".")[0]] = (
            a.name if a.asname else "alfx"
          )
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Attribute)
      and node.attr.startswith("_")
      and not node.attr.startswith("__")
    ):
      base = node.value
      chain = []
      while isinstance(base, ast.Attribute):
        chain.append(base.attr)
        base = base.value
      if isinstance(base, ast.Name) and base.id in aliases:
        dotted = ".".join([aliases[base.id]] + chain[::-1] + [node.attr])
        if not _is_module(dotted):
          found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
  return found


def test_the_walk_sees_every_module():
  names = {_module_name(p) for p in _modules()}
  walked = {m.name for m in pkgutil.walk_packages(alfx.__path__, "alfx.")}
  assert walked <= names, walked - names
  assert len(names) > 20, names


@pytest.mark.parametrize(
  "path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_uses_another_modules_private_names(path):
  assert not _private_reach_ins(path), (
    "shared names lose their underscore (they stay private by living in"
    " a private module):\n" + "\n".join(_private_reach_ins(path))
  )


def test_the_reach_in_detector_finds_reach_ins(tmp_path):
  # Negative control: the checker must flag both forms.
  bad = tmp_path / "bad.py"
  bad.write_text(
    "from alfx._core import pool as _pool\n"
    "from alfx._core.selection import _top_b\n"
    "x = _pool._private_thing\n"
    "y = _pool.argmax\n"
  )
  found = _private_reach_ins(bad)
  assert len(found) == 2, found


@pytest.mark.parametrize(
  "path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_every_module_is_short_and_says_what_it_is_for(path):
  lines = path.read_text().count("\n")
  assert lines <= MAX_LINES, f"{path.name}: {lines} lines > {MAX_LINES}"
  tree = ast.parse(path.read_text())
  if path.name != "__main__.py":
    assert ast.get_docstring(tree), f"{path} has no module docstring"


@pytest.mark.parametrize("family", FAMILIES + ("experiment",))
def test_family_packages_are_reachable_as_attributes(family):
  # `alfx.<family>.<name>` must work: no public function may share a
  # family package's name (`alfx.bait` the function would shadow a package
  # `alfx/bait/`).
  importlib.import_module(f"alfx.{family}")
  assert isinstance(getattr(alfx, family), types.ModuleType), family


def test_every_public_name_is_also_in_its_family_package():
  homes = {}
  for family in FAMILIES:
    module = importlib.import_module(f"alfx.{family}")
    for name in module.__all__:
      assert getattr(module, name) is getattr(alfx, name, None) or (
        name not in alfx.__all__
      ), (family, name)
      homes.setdefault(name, family)
  core_only = {"Selection", "top_b", "shard_pool", "ShardedPool", "checked"}
  missing = set(alfx.__all__) - set(homes) - core_only
  assert not missing, f"not exported by any family package: {missing}"
  for name in alfx.__all__:
    assert hasattr(alfx, name), name
