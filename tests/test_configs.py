"""Every experiment config composes, resolves and passes the run's checks, for
both profiles: every value of every swept key in the fast suite, every point of
the sweep in the slow one; rows and profiles are groups."""
import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import tprop_exp.cli  # noqa: F401  (registers the config resolvers)
from tprop_exp.cli import CONF
from tprop_exp.run.schema import validate

EXPERIMENTS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
PAPER = ["table1_main", "table2_regularization", "table3_minibatch", "figure_hidden", "methods"]
# the sweep folder's name where it is not the experiment's (references beside their grid)
NAMES = {"h_sensitivity_ref": "h_sensitivity"}


def test_every_paper_experiment_exists():
    assert set(PAPER) <= set(EXPERIMENTS)


def sweep_of(cfg):
    """The sweep's override strings, resolved as Hydra's sweeper resolves them."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.key_or_group: [str(v) for v in o.sweep_iterator()] if o.is_sweep_override()
            else [o.value()] for o in parsed}


def each_value(sweep):
    """Every value of every key once, the other keys at their first value."""
    first = {k: vs[0] for k, vs in sweep.items()}
    points = [first] + [{**first, k: v} for k, vs in sweep.items() for v in vs[1:]]
    return [[f"{k}={v}" for k, v in p.items()] for p in points]


def every_point(sweep):
    return [[f"{k}={v}" for k, v in zip(sweep, p)] for p in itertools.product(*sweep.values())]


def check_points(name, profile, points_of):
    """Compose the experiment's sweep, then each of `points_of(sweep)` as a run."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}", f"profile={profile}"],
                      return_hydra_config=True)
        sweep = sweep_of(cfg)
        assert cfg.name == NAMES.get(name, name)
        # a seed changes no composition: one is enough to check
        points = points_of({**sweep, "train.seed": sweep["train.seed"][:1]} if "train.seed" in sweep else sweep)
        for point in points:
            run = compose("config", overrides=[f"experiment={name}", f"profile={profile}", *point])
            validate(run)
            OmegaConf.to_container(run, resolve=True)  # no dangling interpolation
            assert run.profile.name == profile
    return sweep


# A compose takes about half a second on a 2-core VM and the largest sweeps have
# 180 points: every value of every key here, every point in the slow test below.
@pytest.mark.parametrize("profile", ["sample", "paper"])
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, profile):
    sweep = check_points(name, profile, each_value)
    if name in PAPER:
        expect = {"sample_chars", "sample_words"} if profile == "sample" else {"text8", "wiki_large"}
        assert set(sweep["dataset"]) == expect


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["sample", "paper"])
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_point_of_every_sweep_composes(name, profile):
    check_points(name, profile, every_point)


def test_table_sweeps_cover_the_claims():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        t1 = sweep_of(compose("config", overrides=["experiment=table1_main"], return_hydra_config=True))
        t3 = sweep_of(compose("config", overrides=["experiment=table3_minibatch"], return_hydra_config=True))
        fig = sweep_of(compose("config", overrides=["experiment=figure_hidden"], return_hydra_config=True))
    assert set(t1["method.mode"]) == {"batch", "minibatch"}
    assert len(t1["method.block_size"]) >= 2 and {"bptt", "h0", "h1", "h5"} <= set(t1["row"])
    assert len(t3["train.batch_size"]) >= 3
    assert len(fig["arch.hidden_size"]) >= 3


def test_seeds_key_expands_to_seed_list():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=methods", "seeds=3"], return_hydra_config=True)
    assert sweep_of(cfg)["train.seed"] == ["1111", "1112", "1113"]


ROWS = [("bptt", "bptt", 0), ("h0", "admm", 0), ("h1", "admm", 1), ("h5", "admm", 5),
        ("admm", "admm", 5), ("alm", "alm", 5), ("penalty", "penalty", 5),
        ("authors_admm", "admm", 10), ("authors_alm", "alm", 5), ("authors_penalty", "penalty", 10),
        ("h1_tanh", "admm", 1), ("h1_kl", "admm", 1), ("h1_tanh_kl", "admm", 1),
        ("h3", "admm", 3), ("penalty_h1", "penalty", 1), ("penalty_h3", "penalty", 3)]


@pytest.mark.parametrize("name", ["constrained", "h_sensitivity", "h_sensitivity_ref"])
def test_beyond_sweeps_are_spec_7s(name):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        sweep = sweep_of(compose("config", overrides=[f"experiment={name}"], return_hydra_config=True))
    if name == "constrained":
        assert set(sweep["row"]) == {"bptt", "h1", "h1_tanh", "h1_kl", "h1_tanh_kl"}
        assert len(sweep["arch.hidden_size"]) >= 3
    elif name == "h_sensitivity":
        lrs = [float(v) for v in sweep["method.h_lr"]]
        assert min(lrs) <= 0.1 and max(lrs) >= 10 and 1.0 in lrs  # a decade each side of 1.0
        assert set(sweep["method.h_optimizer"]) >= {"sgd", "adagrad", "tprnn_adagrad"} and set(sweep["row"]) == {"h1", "h5"}
        assert len(sweep["method.block_size"]) == 2 and len(sweep["dataset"]) == 2
    else:
        assert set(sweep["row"]) == {"bptt", "h0"}


def test_rows_select_the_method():
    assert sorted(p.stem for p in (Path(CONF) / "row").glob("*.yaml")) == sorted(r for r, _, _ in ROWS)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for row, name, h in ROWS:
            cfg = compose("config", overrides=["experiment=table1_main", f"row={row}"])
            assert (cfg.method.name, cfg.method.h_steps) == (name, h)
        # a row on its own, without an experiment, also selects its method
        assert compose("config", overrides=["row=alm"]).method.name == "alm"


@pytest.mark.parametrize("experiment", ["methods", "table1_main", None])
def test_explicit_method_wins_over_the_row(experiment):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        extra = [f"experiment={experiment}"] if experiment else []
        for row in ("bptt", "h1", "admm", "alm"):
            cfg = compose("config", overrides=[*extra, f"row={row}", "method=penalty"])
            assert cfg.method.name == "penalty", row
        if experiment:
            assert compose("config", overrides=[*extra, "method=penalty"]).method.name == "penalty"


def test_plain_runs_have_no_profile():
    """A plain run uses no profile's settings, so it is not filed under one."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["dataset=text8"], return_hydra_config=True)
        assert cfg.profile is None
        assert cfg.hydra.sweep.dir == "sweeps/default"
        cfg = compose("config", overrides=["experiment=methods", "profile=paper"], return_hydra_config=True)
        assert cfg.hydra.sweep.dir == "sweeps/methods/paper"
        assert cfg.arch.cell == "lstm" and cfg.dataset.vocab_size is None


def test_schema_choices_match_the_training_code():
    from tprop_exp.core import model as models
    from tprop_exp.core import optim, registry
    from tprop_exp.run import schema

    assert set(schema.OPTIMIZERS) == set(optim.OPTIMIZERS)
    assert set(schema.PRECISIONS) == set(models.PRECISIONS)
    # methods and cells are what registered itself: the built-ins, each one module
    registry.load(None, "method")
    assert set(registry.METHODS) == {"bptt", "penalty", "admm", "alm"}
    assert set(registry.CELLS) == {"rnn", "gru", "lstm"}
    for name in ("penalty", "admm", "alm", "bptt"):
        assert (Path(CONF) / "method" / f"{name}.yaml").exists()


# Every config group's options, read off conf/: experiments are composed above, and
# paper/ holds the defaults the paper's experiments include, not a choice.
OPTIONS = sorted(f"{p.parent.relative_to(CONF).as_posix()}={p.stem}" for p in Path(CONF).rglob("*/*.yaml")
                 if p.parent.name not in ("experiment", "paper"))


@pytest.mark.parametrize("option", OPTIONS)
def test_every_group_option_composes(option):
    """Also the options no experiment uses, such as the SLURM launcher."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        group = option.split("=")[0]
        if group.startswith("hydra/"):  # hydra.runtime is not set outside a run: read, not resolved
            cfg = compose("config", overrides=[option], return_hydra_config=True)
            assert OmegaConf.select(cfg, group.replace("/", "."))
        else:
            OmegaConf.to_container(compose("config", overrides=[option]), resolve=True)
