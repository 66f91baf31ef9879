"""What the command says: --help, refusals in one line, the command recorded
as typed, the nearest keys for a typo, install hints in shipped configs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tprop_exp import cli as cli_module
from tprop_exp.run import records, schema

PKG = Path(cli_module.__file__).parent


def run(*args, cwd=None):
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("TPROP_EXP_COMMAND", None)
    return subprocess.run([sys.executable, "-m", "tprop_exp", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def test_help_lists_groups_chosen_by_hand_and_the_lr_decay():
    p = run("--help")
    assert p.returncode == 0
    assert "\nmethod: admm, alm, bptt, penalty" in p.stdout
    assert any(line.startswith("experiment: ") and "demo" in line for line in p.stdout.splitlines())
    assert "paper:" not in p.stdout and "schema:" not in p.stdout  # not chosen by hand
    assert "lr_decay" in p.stdout


def test_cfg_job_with_multirun_is_one_line(tmp_path):
    p = run("--cfg", "job", "-m", "method=bptt,admm", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["tprop_exp: error: --cfg job prints one run's config: "
                                             "give one run's overrides, without -m"]


def test_unknown_key_names_the_nearest_keys_and_no_file(tmp_path):
    p = run("train.lrr=0.1", cwd=tmp_path)
    line = p.stderr.strip()
    assert p.returncode == 2 and len(line.splitlines()) == 1
    assert "did you mean train.lr" in line and ".py" not in line
    assert "method.h_steps" in schema.unknown_key("method.hstep")
    assert "did you mean" not in schema.unknown_key("zzzz.qqqq")


@pytest.mark.parametrize("argv0,typed", [("/venv/bin/tprop_exp", "tprop_exp"),
                                         ("/x/tprop_exp/__main__.py", "python -m tprop_exp")])
def test_command_is_recorded_as_typed(monkeypatch, argv0, typed):
    monkeypatch.setattr(sys, "argv", [argv0, "method=admm"])
    assert cli_module.typed_command() == typed
    monkeypatch.setenv("TPROP_EXP_COMMAND", cli_module.typed_command())
    assert records.command(["method=admm"]) == f"{typed} method=admm"


def test_shipped_configs_do_not_say_editable_installs():
    for f in (PKG / "conf").rglob("*.yaml"):
        assert "pip install -e" not in f.read_text(), f
