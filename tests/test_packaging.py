"""The package as a user gets it: a wheel (not an editable install) in a fresh
virtual environment outside the repository, run from a folder outside it.

The new environment takes the dependencies from the one running the tests (a
.pth file adds its site-packages), so nothing is downloaded. It lies inside
another git repository, whose commit must not be recorded as the code's.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import hydra
import pytest
import torch

import tprop_exp

ROOT = Path(__file__).resolve().parents[1]
TINY = ["arch.hidden_size=8", "train.train_tokens=2000", "train.max_epochs=1",
        "train.eval_batch_size=4", "dataset=sample_chars"]
INSTALLED = f"unknown (installed package {tprop_exp.__version__})"


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "HYDRA_FULL_ERROR"):
        e.pop(key, None)  # nothing may lead the new environment back to the checkout
    return e


def run(args, cwd, timeout=300):
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env(), capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a copy of the sources, so that the build leaves nothing in the checkout.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for package in ("tprop_exp", "hydra_plugins"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", tmp / "dist", src], cwd=tmp)
    wheel, = (tmp / "dist").glob("tprop_exp-*.whl")

    other = tmp / "other_repo"
    other.mkdir()
    git = ["git", "-c", "user.name=x", "-c", "user.email=x@example.org"]
    run(git + ["init", "-q"], cwd=other)
    run(git + ["commit", "-q", "--allow-empty", "-m", "unrelated"], cwd=other)
    venv = other / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    py = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel], cwd=tmp)
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv


@pytest.fixture
def home(tmp_path):
    """A folder outside the repository to run in."""
    assert ROOT not in tmp_path.parents
    return tmp_path


def one_result(folder):
    found = list(folder.glob("runs/**/result.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def test_installed_from_the_wheel_not_the_checkout(venv, home):
    p = run([venv / "bin" / "python", "-c", "import tprop_exp; print(tprop_exp.__file__)"], cwd=home)
    assert Path(p.stdout.strip()).is_relative_to(venv)


def test_command_trains_and_records_provenance(venv, home):
    run([venv / "bin" / "tprop_exp", *TINY], cwd=home)
    res = one_result(home)
    assert res["status"] == "completed" and res["best_valid_ppl"] > 1
    assert res["commit"] == INSTALLED  # not the commit of the repository the venv lies in
    assert res["tprop_exp"] == tprop_exp.__version__
    assert res["python"] == platform.python_version()
    assert res["torch"] == torch.__version__
    assert res["cuda"] == torch.version.cuda
    assert res["cudnn"] == torch.backends.cudnn.version()
    assert res["hydra"] == hydra.__version__


def test_python_m_trains_a_users_own_experiment_file(venv, home):
    # The README's example: an experiment file in the user's folder, via --config-dir.
    (home / "conf" / "experiment").mkdir(parents=True)
    (home / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nname: mine\narch:\n  hidden_size: 8\n"
        "train:\n  train_tokens: 2000\n  max_epochs: 1\n  eval_batch_size: 4\n")
    run([venv / "bin" / "python", "-m", "tprop_exp", "--config-dir", "conf",
         "experiment=mine", "dataset=sample_chars"], cwd=home)
    res = one_result(home)
    assert res["status"] == "completed"
    assert res["config"]["name"] == "mine" and res["config"]["arch"]["hidden_size"] == 8
    folders = list((home / "runs" / "mine").iterdir())  # runs/<name>/<prefix>-<hash>
    assert len(folders) == 1 and (folders[0] / "result.json").exists()


def test_help_is_ours_and_loads_no_torch(venv, home):
    p = run([venv / "bin" / "python", "-m", "tprop_exp", "--help"], cwd=home)
    assert "powered by Hydra" not in p.stdout
    for word in ("tprop_exp", "dataset", "arch", "method", "experiment", "profile", "train.", "-m",
                 "sample_chars"):
        assert word in p.stdout, word
    probe = ("import sys\nfrom tprop_exp.cli import cli\nsys.argv = ['tprop_exp', '--help']\n"
             "try:\n    cli()\nexcept SystemExit:\n    pass\nprint('torch loaded:', 'torch' in sys.modules)")
    p = run([venv / "bin" / "python", "-c", probe], cwd=home)
    assert p.stdout.strip().endswith("torch loaded: False")
