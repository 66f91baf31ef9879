"""A method and a cell of one's own, added from outside the package as the
README's "Adding a method" says: one Python file and one YAML file each, in a
folder of their own, trained through the command line."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import tiny_model
from tprop_exp import UserError
from tprop_exp.core import registry

TOY_METHOD = '''
"""A toy method: truncated BPTT whose loss is scaled by its own key, method.scale."""
from dataclasses import dataclass

from tprop_exp.core.model import detach, mean_nll
from tprop_exp.core.registry import Method, MethodConf, register_method
from tprop_exp.data.corpora import batchify, windows


@dataclass
class ToyConf(MethodConf):
    scale: float = 1.0


def train_epoch(model, theta, stream, cfg, state, epoch=1, pos=None, on_update=None):
    K, B = cfg.method.block_size, cfg.train.batch_size
    x, y, _ = windows(batchify(stream, B), K)
    h, total = model.zero_state(B), 0.0
    model.train()
    for i in range(x.shape[0]):
        logits, h = model(x[i], h)
        loss = mean_nll(logits, y[i])
        h = detach(h)
        theta.zero_grad()
        theta.backward(cfg.method.scale * loss)
        theta.step()
        total += loss.item()
    state["epochs"] = state.get("epochs", 0) + 1
    return {"running_nll": total / x.shape[0], "toy_epochs": state["epochs"], "tokens": x.numel()}


def end_epoch(state, cfg):
    pass


register_method(Method("toy", train_epoch, end_epoch, schema=ToyConf))
'''

TOY_CELL = '''
"""A toy cell: the tanh RNN written out step by step with nn.RNNCell."""
import torch
from torch import nn

from tprop_exp.core.registry import Cell, register_cell


class Elman(nn.Module):
    def __init__(self, d, layers):
        super().__init__()
        self.layers = nn.ModuleList(nn.RNNCell(d, d) for _ in range(layers))

    def forward(self, x, h):
        hs, out = list(h), []
        for t in range(x.shape[0]):
            inp = x[t]
            for i, cell in enumerate(self.layers):
                hs[i] = inp = cell(inp, hs[i])
            out.append(inp)
        return torch.stack(out), torch.stack(hs)


register_cell(Cell("elman", Elman))
'''


@pytest.fixture
def outside(tmp_path):
    """A folder outside the package: two modules and their YAML files."""
    (tmp_path / "toymethod.py").write_text(TOY_METHOD)
    (tmp_path / "toycell.py").write_text(TOY_CELL)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "arch").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "toy.yaml").write_text(textwrap.dedent("""\
        _target_: toymethod   # the module that registers the method
        name: toy
        mode: minibatch
        block_size: 10
        scale: 0.5
        """))
    (tmp_path / "conf" / "arch" / "elman.yaml").write_text(textwrap.dedent("""\
        _target_: toycell
        cell: elman
        hidden_size: 8
        num_layers: 1
        init_range: 0.1
        """))
    return tmp_path


def cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "tprop_exp", "--config-dir", "conf", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


SMALL = ["train.train_tokens=3000", "train.max_epochs=2", "train.eval_batch_size=4",
         "train.train_eval_tokens=1000", "train.batch_size=4", "dataset=sample_chars"]


def test_a_method_and_a_cell_of_ones_own_train_through_the_cli(outside):
    p = cli(["method=toy", "arch=elman", *SMALL], outside)
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = list((outside / "runs" / "default").iterdir())
    res = json.loads((run / "result.json").read_text())
    assert res["status"] == "completed" and res["epochs"] == 2
    assert res["config"]["method"]["scale"] == 0.5 and res["config"]["arch"]["cell"] == "elman"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["toy_epochs"] for r in rows] == [1, 2]  # its own core ran, and kept its state
    assert run.name.startswith("toy-K10-elman8-sample_chars-")
    # its own key is typed and checked like the built-in ones
    bad = cli(["method=toy", "arch=elman", "method.scale=abc", *SMALL], outside)
    assert bad.returncode == 2 and "method.scale" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # the generic forward init: test_generic_block_ends_equal_the_fast_path, fast
def test_a_cell_of_ones_own_runs_btprop(outside):
    """BTPROP's forward initialisation has a generic path for cells it does not know."""
    p = cli(["method=admm", "method.h_steps=1", "arch=elman", *SMALL], outside)
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = list((outside / "runs" / "default").iterdir())
    assert json.loads((run / "result.json").read_text())["status"] == "completed"


def test_an_unimportable_target_is_one_line(outside):
    (outside / "conf" / "method" / "gone.yaml").write_text("_target_: no_such_module\nname: gone\n")
    p = cli(["method=gone", *SMALL], outside)
    assert p.returncode == 2 and "no_such_module" in p.stderr and "method._target_" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (outside / "runs").exists()


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_generic_block_ends_equal_the_fast_path(cell):
    """states_every's loop over blocks (for a cell of one's own) gives what the
    one-pass path gives for the built-in cells."""
    model = tiny_model(cell, layers=2)
    tokens = torch.randint(0, 7, (24, 1))
    state = model.zero_state(1)
    fast, fast_final = model.states_every(tokens, state, 4)
    model._one = None  # as for a cell it does not know
    slow, slow_final = model.states_every(tokens, state, 4)
    assert torch.allclose(fast, slow, atol=1e-12)
    assert torch.allclose(model.flat_state(fast_final), model.flat_state(slow_final), atol=1e-12)


def test_unknown_names_are_refused_with_the_registered_ones():
    with pytest.raises(UserError, match="admm, alm, bptt, penalty"):
        registry.method("nope")
    with pytest.raises(UserError, match="gru, lstm, rnn"):
        registry.cell("nope")


def test_a_key_added_at_its_default_keeps_old_runs_identity():
    """A key added later (registry.added) at its default is left out of a run's
    identity, so the folders of runs recorded before it existed are still found."""
    from dataclasses import dataclass

    from tprop_exp.core.methods import BTPropConf
    from tprop_exp.run import schema

    @dataclass
    class Later(BTPropConf):
        newer: float = registry.added(0.0)

    registry.register_method(registry.Method("later_toy", lambda *a, **k: {}, lambda *a: None, schema=Later))
    try:
        old = {"method": {"name": "later_toy", "h_lr": 1.0}, "train": {"lr": 1.0}}
        assert schema.run_hash({**old, "method": {**old["method"], "newer": 0.0}}) == schema.run_hash(old)
        assert schema.run_hash({**old, "method": {**old["method"], "newer": 0.5}}) != schema.run_hash(old)
    finally:
        registry.METHODS.pop("later_toy")
