"""The house rules, read from the source: imports point down the layers of ``hgan/`` and
from ``data_prep/``, ``bench/`` and the entry points into it (never back), there is no
import cycle, the shared layers never import a model family nor probe a family's model for
its attributes or an export for signature names, the two families never import each other,
and no file edits ``sys.path`` (everything imports the installed package)."""
import ast
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first; a module may import its own layer or any below it.
LAYERS = [
    ("hgan", "hgan.tf_compat"),
    ("hgan.config",),
    ("hgan.data",),
    ("hgan.layers",),
    ("hgan.modeling",),
    ("hgan.evaluation",),
    ("hgan.training",),
    ("hgan.serving",),
    ("hgan.families",),
    ("hgan.cli",),  # the commands
    ("data_prep",),  # dataset tools (their commands use hgan.cli.start)
    ("bench", "train", "eval"),  # benchmarks and the top-level entry points
]
FAMILIES = {
    "hgan": ("hgan.modeling.hgan", "hgan.evaluation.hgan_scoring",
             "hgan.evaluation.hgan_report", "hgan.training.hgan_task",
             "hgan.training.hgan_token_cache", "hgan.serving.hgan_module"),
    "iatv": ("hgan.modeling.iatv", "hgan.evaluation.iatv_scoring",
             "hgan.evaluation.iatv_report", "hgan.training.iatv_task",
             "hgan.training.iatv_pairs", "hgan.serving.iatv_module"),
}
TOP = ("hgan.families", "hgan.cli", "data_prep", "bench", "train", "eval")
SOURCES = ("hgan", "data_prep", "bench")


def _module_files() -> dict:
    """{module name: path} of every Python module of the project (tests aside)."""
    out = {"train": os.path.join(ROOT, "train.py"), "eval": os.path.join(ROOT, "eval.py")}
    for top in SOURCES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                out[module] = path
    return out


def _modules() -> dict:
    """{module name: set of project modules it imports (anywhere in the file)}."""
    out = {}
    for module, path in _module_files().items():
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
    assert len(graph) > 60 and "data_prep.writer" in graph and "bench.train_step" in graph
    up = [(m, i) for m, imps in graph.items() for i in imps
          if i != "hgan" and _layer(i) > _layer(m)]
    assert not up, f"upward imports: {sorted(up)}"


def test_the_shared_layers_never_import_a_family_and_families_not_each_other():
    graph = _modules()
    bad = []
    for m, imps in graph.items():
        if _top(m):  # the commands and benches choose a family
            continue
        for i in imps:
            if _family(i) is not None and _family(m) != _family(i):
                bad.append((m, i))
    assert not bad, f"imports across a family boundary: {sorted(bad)}"
    assert [m for m in graph if _family(m) is None and "iatv" in m
            and not m.startswith(("bench", "hgan.cli"))] == []


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
    for module, path in _module_files().items():
        if module.startswith("hgan.config"):
            continue
        for line in open(path):
            if ".family ==" in line or ".family !=" in line:
                if _family(module) is None and not _top(module):
                    hits.append((module, line.strip()))
    assert not hits, hits


def _top(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TOP)


def _probes(tree) -> list[str]:
    """``getattr`` / ``hasattr`` on a model, and ``signatures.get(...)`` (trying signature
    names in turn), in one module's syntax tree."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and node.args:
            target = ast.unparse(node.args[0])
            if "model" in target:
                found.append(ast.unparse(node))
        if (isinstance(func, ast.Attribute) and func.attr == "get"
                and "signatures" in ast.unparse(func.value)):
            found.append(ast.unparse(node))
    return found


def test_shared_code_never_probes_a_family_model_or_an_export():
    """What a family offers reaches shared code through ``hgan.families.Family`` (its
    report hook) and the serving contract (``hgan.serving.savedmodel``), never by asking
    a model whether it has an attribute or an export which signature names it has."""
    hits = {}
    for module, path in _module_files().items():
        if _family(module) is not None:
            continue
        found = _probes(ast.parse(open(path).read()))
        if found:
            hits[module] = found
    assert not hits, hits
    # The check can fail: it finds the probes this rule forbids.
    assert _probes(ast.parse("getattr(model, 'word_head', None)\n"
                             "signatures.get('rerank_features')")) == [
        "getattr(model, 'word_head', None)", "signatures.get('rerank_features')"]


def test_no_file_edits_sys_path():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    assert len(files) > 60
    hits = [f for f in files if "sys.path" in open(os.path.join(ROOT, f)).read()
            and f != "tests/test_layout.py"]
    assert not hits, f"files that edit sys.path (import the installed package): {hits}"
