"""The house rules of ``hgan/`` (README, "The house"), read from the source: imports point
down the layers, there is no import cycle, the shared layers never import a model family,
and the two families never import each other."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first; a module may import its own layer or any below it.
LAYERS = [
    ("hgan", "hgan.tf_compat"),
    ("hgan.config", "hgan.experiments"),
    ("hgan.data",),
    ("hgan.layers",),
    ("hgan.modeling",),
    ("hgan.evaluation",),
    ("hgan.training",),
    ("hgan.serving",),
    ("hgan.families",),
    ("hgan.export", "hgan.search", "hgan.serve"),  # the CLIs
]
FAMILIES = {
    "hgan": ("hgan.modeling.hgan", "hgan.evaluation.hgan_scoring", "hgan.training.hgan_task",
             "hgan.serving.hgan_module"),
    "iatv": ("hgan.modeling.iatv", "hgan.evaluation.iatv_scoring", "hgan.training.iatv_task",
             "hgan.training.iatv_pairs", "hgan.serving.iatv_module"),
}
TOP = ("hgan.families", "hgan.export", "hgan.search", "hgan.serve")


def _modules() -> dict:
    """{module name: set of hgan modules it imports (anywhere in the file)}."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "hgan")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
            imports = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    imports |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    imports.add(node.module)
                    imports |= {f"{node.module}.{a.name}" for a in node.names}
            out[module] = imports
    return {m: {i for i in imps if i in out and i != m} for m, imps in out.items()}


def _layer(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (level, len(p))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def _family(module: str):
    for family, prefixes in FAMILIES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return family
    return None


def test_every_import_points_down_the_layers():
    graph = _modules()
    assert len(graph) > 40  # the walk found the package
    up = [(m, i) for m, imps in graph.items() for i in imps
          if i != "hgan" and _layer(i) > _layer(m)]
    assert not up, f"upward imports: {sorted(up)}"


def test_the_shared_layers_never_import_a_family_and_families_not_each_other():
    graph = _modules()
    bad = []
    for m, imps in graph.items():
        if m in TOP:
            continue
        for i in imps:
            if _family(i) is not None and _family(m) != _family(i):
                bad.append((m, i))
    assert not bad, f"imports across a family boundary: {sorted(bad)}"
    assert [m for m in graph if _family(m) is None and "iatv" in m] == []


def test_no_import_cycle():
    graph = _modules()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for i in graph[m]:
            if state.get(i) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(path + [m, i])}")
            if i not in state:
                visit(i, path + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_the_family_is_chosen_in_one_place():
    """``"iatv"`` / ``"hgan"`` compared with the config's family only in families.py (and
    each family's own checks of the config it was given)."""
    hits = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "hgan")):
        for name in files:
            path = os.path.join(dirpath, name)
            if not name.endswith(".py") or name == "config.py":
                continue
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            for line in open(path):
                if ".family ==" in line or ".family !=" in line:
                    if _family(module) is None and module not in TOP:
                        hits.append((module, line.strip()))
    assert not hits, hits
