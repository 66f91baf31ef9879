"""How long a sweep takes here: its distinct settings, and time per run, before starting it.

    tprop_exp plan [experiment=NAME] [profile=sample|paper] [key=value ...] [-m] [--config-dir DIR]
    (python -m tprop_exp.plan works the same)

It takes what a run or a sweep takes: an experiment or none, comma-separated
values to sweep (`method=bptt,admm`; -m may be given or not), and
--config-dir for your own experiment files. The experiment's
hydra.sweeper.params are expanded as Hydra's basic sweeper expands them (its
own override parser), and each run's config is composed. Runs that differ
only in train.seed are one setting, with its seeds counted.

Every distinct training shape (method, mode, cell, size, K, batch, h-steps,
vocabulary) is timed on synthetic tokens with the run's device, dtype,
precision and threads: one warm-up epoch of at least WARMUP_UPDATES updates,
then epochs of that many updates repeated for at least MIN_SECONDS (and at
least REPEATS times); the median speed counts. Evaluation is timed the same
way. A run's estimate is its epochs × (its training tokens / the training
speed + its validation and train-perplexity tokens / the evaluation speed),
plus the test split; runs that stop early take less. On an otherwise idle
machine the training speed is within a factor of FACTOR of a real run's
`train_tokens_per_s` (tests/test_plan.py checks it on a real run).
"""
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tprop_exp import UserError
from tprop_exp.core import optim, registry
from tprop_exp.core.model import PRECISIONS, build_model
from tprop_exp.core.perplexity import evaluate
from tprop_exp.data.corpora import load_corpus, resolve_data_dir
from tprop_exp.run import checks, schema  # noqa: F401  (checks: the resolvers the configs use)
from tprop_exp.run.schema import CONF
from tprop_exp.run.trainer import pick_device

SHAPE = ("method.name", "method.mode", "arch.cell", "arch.hidden_size", "arch.num_layers",
         "method.block_size", "train.batch_size", "method.h_steps", "method.theta_steps",
         "method.chunk_blocks", "train.dtype", "train.precision", "train.optimizer", "train.threads", "vocab")
WARMUP_UPDATES, REPEATS, MIN_SECONDS = 20, 3, 1.0
FACTOR = 2  # the stated bound of the estimate's speed against a real run's, either way


def sweep_runs(overrides, config_dir=None):
    """The override lists of every run of the sweep `overrides` describe, with their configs."""
    parser = OverridesParser.create()
    if config_dir is not None:  # as Hydra's --config-dir: one more place to look for configs
        overrides = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]", *overrides]
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
        if "_target_" in cfg.hydra.sweeper and "optuna" in str(cfg.hydra.sweeper._target_):
            raise UserError("plan sizes a grid sweep; an Optuna search (hparams_search=) runs "
                            "hydra.sweeper.n_trials runs of the settings it draws")
        params = cfg.hydra.sweeper.get("params")  # none without an experiment
        params = OmegaConf.to_container(params, resolve=True) if params else {}
        # as Hydra's sweep: the experiment's params, then the command line's on top
        parsed = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides))
        runs = [r for batch in BasicSweeper.split_arguments(parsed, None) for r in batch]
        return [(r, compose("config", overrides=r)) for r in runs]


def corpus_facts(dataset, data_dir, cache={}):
    """(vocabulary size, training, validation and test tokens) of a dataset, from its cache."""
    key = OmegaConf.to_yaml(dataset)
    if key not in cache:
        c = load_corpus(dataset, resolve_data_dir(data_dir))
        cache[key] = (len(c.vocab), len(c.train), len(c.valid), len(c.test))
    return cache[key]


def timed(fn, device):
    """Seconds of fn(), the device's queue drained on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def median_rate(fn, tokens, device):
    """Median tokens/s of fn() over REPEATS calls or more, MIN_SECONDS in all."""
    rates, spent = [], 0.0
    while len(rates) < REPEATS or spent < MIN_SECONDS:
        s = timed(fn, device)
        rates.append(tokens / s)
        spent += s
    return statistics.median(rates)


def speed(cfg, vocab):
    """(training, evaluation) tokens per second of cfg's core, as the run's epochs do them."""
    device = pick_device(cfg.train.device)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.arch, vocab).to(device=device, dtype=getattr(torch, cfg.train.dtype))
        model.amp_dtype = PRECISIONS[cfg.train.precision]
        theta = optim.build(model, cfg)
        K, B = cfg.method.block_size, cfg.train.batch_size
        core = registry.method(cfg.method.name, cfg.method.get("_target_"))
        if cfg.method.mode == "minibatch":  # an epoch of WARMUP_UPDATES updates
            stream = torch.randint(0, vocab, (K * B * WARMUP_UPDATES + B + 1,), device=device)
        else:  # batch mode: one update over up to chunk_blocks blocks (BPTT: as many windows)
            stream = torch.randint(0, vocab, (K * max(2, min(cfg.method.chunk_blocks, 2048)) + 1,), device=device)
        tokens = core.train_epoch(model, theta, stream, cfg, {}, on_update=lambda pos: None)["tokens"]  # warm-up
        train = median_rate(lambda: core.train_epoch(model, theta, stream, cfg, {}, on_update=lambda pos: None),
                            tokens, device)
        evaluate(model, stream, cfg.train.eval_batch_size)  # warm-up
        return train, median_rate(lambda: evaluate(model, stream, cfg.train.eval_batch_size), len(stream), device)
    finally:
        torch.set_num_threads(threads)


def duration(seconds):
    """Readable: 40 s, 3 min 5 s, 1 h 12 min, 2 d 3 h."""
    s = round(seconds)
    if s < 60:
        return f"{max(s, 1) if seconds > 0 else 0} s"
    if s < 600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    m = round(seconds / 60)
    if m < 60 * 48:
        return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min"
    h = round(seconds / 3600)
    return f"{h // 24} d {h % 24} h"


def setting(run):
    """A run's overrides less its seed and the experiment's choice: what its row is named by."""
    return " ".join(o for o in run if not o.startswith(("experiment=", "profile=", "train.seed=", "seeds=", "hydra.")))


def plan(overrides, config_dir=None):
    """One row per distinct setting: its seeds, speed, epochs, tokens, time per run and in all."""
    rows, speeds = {}, {}
    for run, cfg in sweep_runs(overrides, config_dir):
        schema.validate(cfg)
        vocab, n_train, n_valid, n_test = corpus_facts(cfg.dataset, cfg.data_dir)
        tokens = min(n_train, cfg.train.train_tokens or n_train)
        shape = tuple(OmegaConf.select(cfg, k) for k in SHAPE[:-1]) + (vocab,)
        if shape not in speeds:
            speeds[shape] = speed(cfg, vocab)
        train_speed, eval_speed = speeds[shape]
        evaluated = n_valid + min(tokens, cfg.train.train_eval_tokens or tokens)  # per epoch
        seconds = cfg.train.max_epochs * (tokens / train_speed + evaluated / eval_speed) + n_test / eval_speed
        key = setting(run) or "(the defaults)"
        if key in rows:
            rows[key]["seeds"] += 1
            rows[key]["total_s"] += seconds
        else:
            rows[key] = {"setting": key, "seeds": 1, "tokens/s": train_speed, "epochs": cfg.train.max_epochs,
                         "train tokens": tokens, "per_run_s": seconds, "total_s": seconds}
    table = pd.DataFrame(list(rows.values()))
    table["share"] = table["total_s"] / table["total_s"].sum()
    # name each row by what sets it apart; what every row shares is said once, under the table
    words = [set(k.split()) for k in table["setting"]]
    common = set.intersection(*words) if len(words) > 1 else set()
    table["setting"] = [" ".join(w for w in k.split() if w not in common) or "(as given)" for k in table["setting"]]
    table.attrs["common"] = " ".join(w for w in table_order(rows) if w in common)
    return table


def table_order(rows):
    """The overrides of the first setting, in the order they were given."""
    return next(iter(rows)).split() if rows else []


def dominant(table, part=0.5):
    """The costliest settings that together take at least `part` of the time."""
    order = table.sort_values("total_s", ascending=False)
    n = int((order["share"].cumsum() < part).sum()) + 1
    return order.head(n)


def render(table):
    out = table.assign(**{"tokens/s": table["tokens/s"].map(lambda v: f"{v:,.0f}"),
                          "train tokens": table["train tokens"].map(lambda v: f"{v:,}"),
                          "per run": table["per_run_s"].map(duration),
                          "in all": table["total_s"].map(duration),
                          "share": table["share"].map(lambda v: f"{v:.0%}")})
    return out.drop(columns=["per_run_s", "total_s"]).to_markdown(index=False, disable_numparse=True)


def split_args(argv):
    """(overrides, --config-dir) from the command line; -m/--multirun are taken as given."""
    overrides, config_dir, it = [], None, iter(argv)
    for a in it:
        if a in ("-m", "--multirun"):
            continue
        if a in ("--config-dir", "-cd"):
            config_dir = next(it, None)
            if config_dir is None:
                raise UserError(f"{a} needs a folder")
        elif a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a.startswith("-"):
            raise UserError(f"unknown flag {a} (plan takes overrides, -m and --config-dir DIR)")
        else:
            overrides.append(a)
    if config_dir is not None and not Path(config_dir).is_dir():
        raise UserError(f"--config-dir: {config_dir} is not a folder")
    return overrides, config_dir


def main(argv=None, prog="python -m tprop_exp.plan"):
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(o in ("-h", "--help") for o in argv):
        print(f"usage: {prog} [experiment=NAME] [profile=sample|paper] [key=value ...] [-m] [--config-dir DIR]\n\n"
              + __doc__.split("\n\n", 2)[2])
        return None
    try:
        overrides, config_dir = split_args(argv)
        table = plan(overrides, config_dir)
    except (UserError, HydraException, OmegaConfBaseException) as e:
        print(f"tprop_exp plan: error: {checks.describe(e)}", file=sys.stderr)
        sys.exit(2)
    print(render(table))
    if table.attrs.get("common"):
        print(f"\nEvery setting above also has: {table.attrs['common']}")
    top = dominant(table)
    runs, total = int(table["seeds"].sum()), table["total_s"].sum()
    print(f"\n{len(table)} settings, {runs} runs; about {duration(total)} in sequence on this device "
          f"(timed here: a median over repeated epochs of {WARMUP_UPDATES} updates, after a warm-up).")
    print(f"Most of the time ({top['share'].sum():.0%}) goes to: "
          + "; ".join(f"{r.setting} ({r.share:.0%})" for r in top.itertuples()))
    return table


if __name__ == "__main__":
    main()
