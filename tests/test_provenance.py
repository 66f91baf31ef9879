"""train.deterministic, and what result.json records of the software and machine."""
import platform

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tprop_exp.run import machine, records, schema, trainer
from tprop_exp.run.schema import CONF

TINY = ["arch.hidden_size=8"]


def composed(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def test_deterministic_off_keeps_every_run_identity():
    base = composed(TINY)
    without = {**base, "train": {k: v for k, v in base["train"].items() if k != "deterministic"}}
    assert base["train"]["deterministic"] is False
    assert schema.run_hash(without) == schema.run_hash(base)  # runs recorded before the key
    assert schema.run_hash(composed(TINY + ["train.deterministic=true"])) != schema.run_hash(base)


def test_deterministic_switches_torch_and_restores_it():
    assert not torch.are_deterministic_algorithms_enabled()
    with machine.deterministic(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()  # the next run of a sweep is as asked
    with machine.deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_seed_everything_seeds_python_and_numpy_too():
    import random

    import numpy as np
    machine.seed_everything(5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    machine.seed_everything(5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_provenance_has_host_and_package_versions():
    import numpy
    import pandas
    prov = records.provenance(torch.device("cpu"), ["method=admm"])
    assert prov["host"] == platform.node() and prov["host"]
    assert prov["packages"]["numpy"] == numpy.__version__ and prov["packages"]["pandas"] == pandas.__version__
