"""The package as a user installs it: every console script answers ``--help`` from another
directory with what it does, the README's commands are console scripts of the package,
and requirements.txt pins what pyproject.toml does."""
import os
import re
import subprocess
import sys
import tomllib

import pytest

from tests_support import ROOT, console_script

PYPROJECT = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
SCRIPTS = PYPROJECT["project"]["scripts"]


def test_requirements_txt_pins_what_pyproject_does():
    lines = [ln.strip() for ln in open(os.path.join(ROOT, "requirements.txt"))]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert pins == PYPROJECT["project"]["dependencies"]
    assert "tensorflow==2.20.*" in pins and "tf-models-official==2.20.0" in pins
    assert PYPROJECT["project"]["optional-dependencies"]["gpu"] == ["tensorflow[and-cuda]==2.20.*"]


def test_every_file_the_package_reads_is_package_data():
    """A wheel holds a package's Python modules and its package-data only: every other file
    under hgan/ and data_prep/ (the search page, the local heads' C source) must match a
    package-data pattern, or an installed package would miss it."""
    import fnmatch
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for top in ("hgan", "data_prep"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith((".py", ".pyc")):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), ROOT)
                covered = any(
                    rel.startswith(package.replace(".", os.sep) + os.sep)
                    and any(fnmatch.fnmatch(rel[len(package) + 1:], pattern)
                            for pattern in patterns)
                    for package, patterns in data.items())
                if not covered:
                    missing.append(rel)
    assert not missing, f"not package data: {missing}"
    assert "native/*.c" in data["hgan.evaluation"]


@pytest.mark.slow
def test_every_console_script_says_what_it_does_from_another_directory(tmp_path):
    assert len(SCRIPTS) >= 11
    # One process for all: each --help imports TensorFlow, about 3 s a command.
    code = ("import subprocess, sys, json; print(json.dumps({n: subprocess.run([p, '--help'], "
            "capture_output=True, text=True) .stdout for n, p in json.loads(sys.argv[1]).items()}))")
    import json
    paths = {name: console_script(name) for name in SCRIPTS}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    helps = json.loads(proc.stdout)
    for name, text in helps.items():
        # absl's --help: the command's docstring (which names it), then its flags.
        assert text.lstrip().startswith(name) or f"{name} " in text.split("\n\n")[0], (
            name, text[:300])
        assert "flags:" in text, (name, text[:300])


def test_the_readmes_commands_are_console_scripts_of_the_package():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    commands = {line.split()[0] for block in blocks for line in block.splitlines()
                if line.strip() and not line.startswith("#")}
    assert commands, "the README shows no command"
    hgan = {c for c in commands if c.startswith("hgan-")}
    assert hgan and hgan <= set(SCRIPTS), hgan - set(SCRIPTS)
    others = commands - hgan
    assert others <= {"bash", "python", ".venv/bin/pip"}, others
    for block in blocks:
        for script in re.findall(r"bash (scripts/\S+)", block):
            assert os.path.exists(os.path.join(ROOT, script)), script


def test_train_py_and_eval_py_run_the_console_scripts_entry_points():
    """The design's top-level ``train.py`` / ``eval.py`` are ``hgan-train`` / ``hgan-eval``:
    each imports that script's entry point and calls it under ``__main__``, nothing else."""
    import ast
    for script, name in (("train.py", "hgan-train"), ("eval.py", "hgan-eval")):
        module, function = SCRIPTS[name].split(":")
        tree = ast.parse(open(os.path.join(ROOT, script)).read())
        body = [node for node in tree.body if not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        assert ast.unparse(body[0]) == f"from {module} import {function}", script
        assert ast.unparse(body[1]) == f"if __name__ == '__main__':\n    {function}()", script
        assert len(body) == 2, script


def test_commands_print_no_info_records_unless_verbosity_asks():
    """A command (``hgan.cli.start``) in a process of its own logs WARNING and above:
    TensorFlow's INFO records (the saver's, the signature serialiser's) stay out of its
    output, and ``--verbosity=0`` brings them back. (absl's app.run raises an unset
    --verbosity to INFO after parsing, so a changed flag default alone does not do it.)"""
    script = ("import logging\n"
              "from absl import logging as absl_logging\n"
              "from hgan.cli import start\n"
              "def main(argv):\n"
              "    logging.getLogger('tensorflow').info('tensorflow info')\n"
              "    absl_logging.info('absl info')\n"
              "    absl_logging.warning('absl warning')\n"
              "start(main, 'A command.')\n")

    def stderr(*args):
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    quiet = stderr()
    assert "absl warning" in quiet
    assert "info" not in quiet, quiet
    loud = stderr("--verbosity=0")
    assert "tensorflow info" in loud and "absl info" in loud, loud
