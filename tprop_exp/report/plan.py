"""How long a sweep takes here: runs, and time per run, before starting it.

    tprop_exp plan experiment=NAME [profile=sample|paper] [key=value ...]
    (python -m tprop_exp.plan works the same)

The experiment's hydra.sweeper.params are expanded as Hydra's basic sweeper
expands them (its own override parser), each run's config is composed, and
every distinct training shape (method, mode, cell, size, K, batch, h-steps,
vocabulary) is timed for a few updates on synthetic tokens with the run's
device, dtype and precision, and so is evaluation. A run's estimate is its
epochs × (its training tokens / the training speed + its validation and
train-perplexity tokens / the evaluation speed), plus the test split; runs
that stop early take less.
"""
import sys
import time

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

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
         "method.chunk_blocks", "train.dtype", "train.precision", "vocab")


def sweep_runs(overrides):
    """The override lists of every run of the sweep `overrides` describe."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True) or {}
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


def speed(cfg, vocab, updates=3):
    """Training tokens per second of cfg's core over a few updates, after one."""
    device = pick_device(cfg.train.device)
    model = build_model(cfg.arch, vocab).to(device=device, dtype=getattr(torch, cfg.train.dtype))
    model.amp_dtype = PRECISIONS[cfg.train.precision]
    theta = optim.build(model, cfg)
    K, B = cfg.method.block_size, cfg.train.batch_size
    per_update = K * (B if cfg.method.mode == "minibatch" else max(2, min(cfg.method.chunk_blocks, 2048)))
    stream = torch.randint(0, vocab, (per_update * updates + B + 1,), device=device)
    core = registry.method(cfg.method.name, cfg.method.get("_target_"))
    core.train_epoch(model, theta, stream, cfg, {})  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = core.train_epoch(model, theta, stream, cfg, {})
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    evaluate(model, stream, cfg.train.eval_batch_size)  # .item() at its end synchronises
    return out["tokens"] / t_train, len(stream) / (time.perf_counter() - t)


def plan(overrides):
    rows, speeds = [], {}
    for run, cfg in sweep_runs(overrides):
        schema.validate(cfg)
        vocab, n_train, n_valid, n_test = corpus_facts(cfg.dataset, cfg.data_dir)
        tokens = min(n_train, cfg.train.train_tokens or n_train)
        shape = tuple(OmegaConf.select(cfg, k) for k in SHAPE[:-1]) + (vocab,)
        if shape not in speeds:
            speeds[shape] = speed(cfg, vocab)
        train_speed, eval_speed = speeds[shape]
        evaluated = n_valid + min(tokens, cfg.train.train_eval_tokens or tokens)  # per epoch
        seconds = cfg.train.max_epochs * (tokens / train_speed + evaluated / eval_speed) + n_test / eval_speed
        rows.append({"run": " ".join(o for o in run if not o.startswith(("experiment=", "profile="))),
                     "tokens/s": train_speed, "epochs": cfg.train.max_epochs,
                     "train tokens": tokens, "hours": seconds / 3600})
    return pd.DataFrame(rows)


def main(argv=None, prog="python -m tprop_exp.plan"):
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(o in ("-h", "--help") for o in overrides):
        print(f"usage: {prog} experiment=NAME [profile=sample|paper] [key=value ...]\n\n"
              + __doc__.split("\n\n", 2)[2])
        return None
    if not any(o.startswith("experiment=") for o in overrides):
        print("tprop_exp.plan: error: experiment=NAME is required", file=sys.stderr)
        sys.exit(2)
    try:
        table = plan(overrides)
    except UserError as e:
        print(f"tprop_exp.plan: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"\n{len(table)} runs; about {table['hours'].sum():.3g} hours in sequence on "
          f"this device (timed from a few updates and one evaluation)")
    return table


if __name__ == "__main__":
    main()
