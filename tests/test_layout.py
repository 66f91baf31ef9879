"""The architecture as the code states it: subpackages whose imports point one
way (report → run → core → data), and one command with subcommands."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tprop_exp"
ORDER = ["cli", "report", "run", "core", "data"]  # each may import only those after it


def layer(module):
    """'tprop_exp.run.trainer' -> 'run'; top-level shims (evaluate, plan, __main__) count as cli."""
    parts = module.split(".")
    if len(parts) == 1:
        return None  # tprop_exp itself: UserError, __version__
    return parts[1] if parts[1] in ORDER else "cli"


def imports(path):
    """The tprop_exp modules a file imports (relative imports resolved)."""
    name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        name = name.rsplit(".", 1)[0] + "._"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tprop_exp")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[:-node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("tprop_exp"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names if (PKG.parent / f"{mod}.{a.name}".replace(".", "/")).exists()
                        or (PKG.parent / (f"{mod}.{a.name}".replace(".", "/") + ".py")).exists()}
    return name, out


def test_imports_point_down_only():
    bad = []
    for path in PKG.rglob("*.py"):
        name, deps = imports(path)
        mine = layer(name)
        for dep in deps:
            theirs = layer(dep)
            if theirs is None or mine is None or theirs == mine:
                continue
            if ORDER.index(theirs) < ORDER.index(mine):
                bad.append(f"{name} imports {dep}")
    assert not bad, bad


def test_no_two_modules_differ_by_a_suffix():
    stems = sorted({p.stem for p in PKG.rglob("*.py")} - {"__init__", "__main__"})
    clashes = [(a, b) for a in stems for b in stems if a != b and b.startswith(a)]
    assert not clashes, clashes


def run(*args):
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("sub", ["report", "evaluate", "plan"])
def test_subcommands_answer_help_both_ways(sub):
    for args in (["-m", "tprop_exp", sub, "--help"], ["-m", f"tprop_exp.{sub}", "--help"]):
        p = run(*args)
        assert p.returncode == 0, p.stderr
        assert "usage:" in p.stdout.lower()


def test_top_level_help_lists_the_subcommands():
    p = run("-m", "tprop_exp", "--help")
    assert p.returncode == 0
    for sub in ("report", "evaluate", "plan"):
        assert f"tprop_exp {sub}" in p.stdout


def test_evaluate_subcommand_refuses_a_folder_in_one_line(tmp_path):
    p = run("-m", "tprop_exp", "evaluate", str(tmp_path))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
