"""Evaluate a finished run's best model: tprop_exp evaluate RUN_DIR [--split test] [--device cpu]

The model is rebuilt from the config stored in RUN_DIR/model.pt and its
weights, then evaluated with θ frozen on one split of the run's corpus (the
training split cut to train.train_tokens, as in training). Prints the
perplexity; a folder without a finished model is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import torch
from omegaconf import OmegaConf

from tprop_exp import UserError
from tprop_exp.core.model import PRECISIONS, build_model
from tprop_exp.core.perplexity import evaluate
from tprop_exp.data.corpora import load_corpus, resolve_data_dir

from . import records
from .trainer import pick_device

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from tprop_exp.core.model import LanguageModel


def load_model(run_dir: str | Path, device: torch.device | str) -> tuple[LanguageModel, DictConfig]:
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise UserError(f"{run_dir} has no model.pt: not a finished run (a run writes it when it ends)")
    saved = records.load_torch(path, "model")
    missing = [k for k in ("state_dict", "vocab_size", "config") if k not in saved]
    if missing:
        raise UserError(f"model {path} has no {', '.join(missing)}")
    cfg = OmegaConf.create(saved["config"])
    model = build_model(cfg.arch, saved["vocab_size"])
    model = model.to(device=device, dtype=getattr(torch, cfg.train.dtype))
    model.amp_dtype = PRECISIONS[cfg.train.precision]
    model.load_state_dict(saved["state_dict"])
    return model, cfg


def perplexity(run_dir: str | Path, split: str = "test", device: str = "cpu") -> float:
    model, cfg = load_model(run_dir, pick_device(device))
    corpus = load_corpus(cfg.dataset, resolve_data_dir(cfg.data_dir))
    if len(corpus.vocab) != model.decoder.weight.shape[0]:
        raise UserError(f"the corpus now has {len(corpus.vocab)} words, the model {model.decoder.weight.shape[0]}")
    tokens = getattr(corpus, split)
    if split == "train" and cfg.train.train_tokens is not None:
        tokens = tokens[:cfg.train.train_tokens]
    with torch.no_grad():
        return evaluate(model, tokens, cfg.train.eval_batch_size)[1]


def main(argv: Optional[List[str]] = None, prog: str = "python -m tprop_exp.evaluate") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", choices=("valid", "test", "train"), default="test")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    args = p.parse_args(argv)
    try:
        ppl = perplexity(args.run_dir, args.split, args.device)
    except UserError as e:
        print(f"tprop_exp.evaluate: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.run_dir}: {args.split} perplexity {ppl:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
