"""The config's schema (SPEC §3): types, allowed values, ranges, run identity.

The dataclasses below are registered in Hydra's ConfigStore as `config_schema`,
the base of conf/config.yaml, so Hydra refuses an unknown key or a value of the
wrong type while it composes. `validate` checks the rest (ranges, choices,
per-method rules) in one place. `identity` is the part of a resolved config
that decides what a run computes: keys marked `identity=False` below (and the
BTPROP keys of a BPTT run) are left out, so they may differ on a re-run.
"""
import hashlib
import json
import math
import re
from pathlib import Path
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oe

from tprop_exp import UserError
from tprop_exp.core import registry
from tprop_exp.core.methods import BTPropConf
from tprop_exp.core.registry import MethodConf, added, volatile  # noqa: F401  (added: for new keys)

CONF = str(Path(__file__).resolve().parents[1] / "conf")  # the shipped config files
OPTIMIZERS = ("sgd", "adagrad", "adam", "tprnn_adagrad")     # core/optim.py OPTIMIZERS
MODES = ("minibatch", "batch")
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = ("float32", "float64")
LEVELS = ("char", "word")
TOKENS = ("chars", "words")
LOGGER_KEYS = {"none": ("name",), "csv": ("name",), "tensorboard": ("name",),  # run/logger.py
               "wandb": ("name", "project", "entity", "mode", "id"),
               "mlflow": ("name", "tracking_uri", "experiment")}
SEED_MAX = 2 ** 64 - 1  # torch.manual_seed takes 0 .. 2**64 - 1 (a negative one wraps round)
# The dataset keys each source reads (data/corpora.py); the others must stay null,
# or the record would describe data the run never read.
DATASET_COMMON = ("name", "source", "level", "vocab_size", "eos", "tokens")
DATASET_READS = {
    "text8": ("urls", "archive", "size", "sha1", "md5", "member", "member_sha1", "train_chars", "valid_chars"),
    "sample": ("train_frac", "valid_frac"),
    "archive": ("urls", "archive", "size", "sha1", "md5", "files", "file_md5"),
    "local": ("path", "train", "valid", "test"),
    "lag": ("lag", "symbols", "copy_prob", "length", "seed"),  # generated (data/lag.py)
}


@dataclass
class TrainConf:
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 1.0
    lr_decay: float = 0.5
    clip: float = 0.5
    max_epochs: int = 5
    patience: int = 5
    seed: int = 1111
    device: str = volatile("auto")
    dtype: str = "float32"
    precision: str = "fp32"
    threads: Optional[int] = volatile(None)
    eval_batch_size: int = 32
    train_tokens: Optional[int] = None
    train_eval_tokens: Optional[int] = 100000
    ckpt_interval_s: float = volatile(600.0)
    log_interval_s: float = volatile(30.0)
    compile: bool = volatile(False)  # torch.compile: speed only, never the result
    deterministic: bool = added(False)  # torch's deterministic algorithms; seeds every RNG in use
    zero_weight_first_type: bool = added(False)  # SPEC §6: the authors' token weights
    init_from: Optional[str] = added(None)       # a state_dict file to start θ from


@dataclass
class ArchConf:
    _target_: Optional[str] = volatile(None)  # the module of a cell of one's own (core/registry.py)
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    init_range: float = 0.1
    init: str = added("uniform")  # uniform | tprnn (SPEC §6 "parameters' init")



@dataclass
class DatasetConf:
    """Datasets differ: every key beyond name, source and level is optional."""
    name: str = "???"
    source: str = "???"
    level: str = "???"
    vocab_size: Optional[int] = None
    eos: Optional[bool] = None
    tokens: Optional[str] = None
    # local files
    path: Optional[str] = None
    train: Optional[str] = None
    valid: Optional[str] = None
    test: Optional[str] = None
    # downloads (mirrors give the same bytes: not part of the identity)
    urls: Optional[List[str]] = volatile(None)
    archive: Optional[str] = None
    size: Optional[int] = None
    sha1: Optional[str] = None
    md5: Optional[str] = None
    member: Optional[str] = None
    member_sha1: Optional[str] = None
    files: Optional[Dict[str, str]] = None
    file_md5: Optional[Dict[str, str]] = None
    # splits
    train_chars: Optional[int] = None
    valid_chars: Optional[int] = None
    train_frac: Optional[float] = None
    valid_frac: Optional[float] = None
    # dataset=lag, generated (SPEC §7; data/lag.py): null for every other dataset
    lag: Optional[int] = added(None)
    symbols: Optional[int] = added(None)
    copy_prob: Optional[float] = added(None)
    length: Optional[int] = added(None)
    seed: Optional[int] = added(None)


@dataclass
class ProfileConf:
    """Settings of the paper's experiments (conf/profile); they reach a run only
    through the keys they set, so the profile itself is not part of its identity."""
    name: str = "???"
    datasets: str = "???"
    block_sizes: str = "???"
    cell: str = "???"
    hidden: int = "???"  # type: ignore[assignment]
    hidden_sizes: str = "???"
    batch_sizes: str = "???"
    vocab_size: Optional[int] = None
    train_tokens: Dict[str, Optional[int]] = field(default_factory=dict)
    epochs: Dict[str, int] = field(default_factory=dict)
    lr: Dict[str, float] = field(default_factory=dict)
    patience: Dict[str, int] = field(default_factory=dict)  # per mode, for experiments that read it
    u_start_epoch: int = 3
    threads: Optional[int] = None
    # experiment=authors (SPEC §6): datasets, epochs, train_tokens
    authors: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    name: str = volatile("default")
    profile: Optional[ProfileConf] = volatile(None)
    seeds: int = volatile(1)
    data_dir: Optional[str] = volatile(None)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    arch: ArchConf = field(default_factory=ArchConf)
    # Each method's YAML brings its own schema (conf/method; core/registry.py),
    # so that a method of one's own can have keys of its own.
    method: Any = None
    train: TrainConf = field(default_factory=TrainConf)
    logger: Any = volatile(None)  # conf/logger: where metrics go; never what a run computes
    rules: str = volatile("textbook")  # the variant's label (conf/variant), for reports; the keys compute


ConfigStore.instance().store(name="config_schema", node=Config)
# The schema of the built-in methods' keys: conf/method/*.yaml start from it.
ConfigStore.instance().store(group="schema", name="btprop", node=BTPropConf)


# ------------------------------------------------------------------ checks

def _bad(key, value, allowed):
    raise UserError(f"{key}: {value!r} is not allowed; it must be {allowed}")


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys added to a typed node (Hydra's `+key=value` opens it), dotted."""
    kind = OmegaConf.get_type(node)
    allowed = {f.name for f in fields(kind)} if is_dataclass(kind) else None
    out = []
    for k in node.keys():
        if k == "hydra" and not prefix:
            continue
        if allowed is not None and k not in allowed:
            out.append(prefix + str(k))
        else:
            child = node._get_node(k)
            if isinstance(child, DictConfig) and not child._is_none() and is_dataclass(OmegaConf.get_type(child)):
                out += unknown_keys(child, f"{prefix}{k}.")
    return out


def known_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema; method.* from every registered method."""
    out = []
    for f in fields(schema):
        sub = f.default_factory if f.default_factory is not None else None
        if f.name == "method" and schema is Config:
            for kind in [BTPropConf, *(m.schema for m in list(registry.METHODS.values()))]:
                out += [k for k in known_keys(kind, "method.") if k not in out]
        elif is_dataclass(sub):
            out += known_keys(sub, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def unknown_key(key: str) -> str:
    """One line for an unknown key, with the nearest known ones."""
    import difflib
    near = difflib.get_close_matches(str(key), known_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else " (tprop_exp --help lists the groups and keys)"
    return f"unknown key {key}{hint}"


def validate(cfg: DictConfig) -> None:
    """Range, choice and per-method checks of a composed config (UserError, one line)."""
    extra = unknown_keys(cfg)
    if extra:
        raise UserError(unknown_key(extra[0]))
    t, a, m, d = cfg.train, cfg.arch, cfg.method, cfg.dataset

    def positive(key: str, value: Optional[float], optional: bool = False) -> None:
        if value is None and optional:
            return
        if value is None or not math.isfinite(value) or value <= 0:
            _bad(key, value, "a positive number" + (" or null" if optional else ""))

    def at_least(key: str, value: Optional[float], low: float) -> None:
        if value is None or not math.isfinite(value) or value < low:
            _bad(key, value, f"a finite number >= {low}")

    def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            _bad(key, value, "one of " + ", ".join(allowed))

    for key in ("batch_size", "eval_batch_size", "max_epochs", "patience", "lr"):
        positive(f"train.{key}", t[key])
    for key in ("threads", "train_tokens", "train_eval_tokens"):
        positive(f"train.{key}", t[key], optional=True)
    at_least("train.clip", t.clip, 0)
    at_least("train.ckpt_interval_s", t.ckpt_interval_s, 0)
    at_least("train.log_interval_s", t.log_interval_s, 0)
    if not (math.isfinite(t.lr_decay) and 0 < t.lr_decay <= 1):
        _bad("train.lr_decay", t.lr_decay, "a number in (0, 1]")
    choice("train.optimizer", t.optimizer, OPTIMIZERS)
    choice("train.dtype", t.dtype, DTYPES)
    choice("train.precision", t.precision, PRECISIONS)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", t.device):
        _bad("train.device", t.device, "auto, cpu or cuda[:N]")

    registry.cell(a.cell, a._target_)  # a cell of one's own registers when its module is imported
    positive("arch.hidden_size", a.hidden_size)
    positive("arch.num_layers", a.num_layers)
    at_least("arch.init_range", a.init_range, 0)
    choice("arch.init", a.init, ("uniform", "tprnn"))
    if t.init_from is not None and not Path(t.init_from).is_file():
        _bad("train.init_from", t.init_from, "a state_dict file (torch.save), e.g. a run's model.pt, or null")

    method = registry.method(m.get("name"), m.get("_target_"))  # imports a method of one's own
    m = method_config(cfg.method, method.schema)
    choice("method.mode", m.mode, MODES)
    positive("method.block_size", m.block_size)
    if isinstance(m, BTPropConf):
        # BPTT ignores the BTPROP keys, but they are checked for every method so
        # that a mixed sweep fails on its first cell, not on its first BTPROP cell.
        from tprop_exp.core import btprop
        choice("method.init", m.init, btprop.INITS)
        choice("method.h_optimizer", m.h_optimizer, tuple(btprop.H_OPTIMIZERS))
        positive("method.chunk_blocks", m.chunk_blocks)
        for key in ("h_steps", "theta_steps", "u_start_epoch", "h_lr", "h_tol", "h_clip", "lam", "u_lr"):
            at_least(f"method.{key}", getattr(m, key), 0)
        positive("method.lam_mult", m.lam_mult)
        authors_rules(m, a)
        # SPEC §7, constrained h-optimisation (core/constrained.py)
        from tprop_exp.core import constrained
        choice("method.h_param", m.h_param, constrained.H_PARAMS)
        choice("method.penalty", m.penalty, constrained.PENALTIES)
        at_least("method.kl_weight", m.kl_weight, 0)
        if m.h_param == "tanh" and a.cell not in ("rnn", "gru", "lstm"):
            _bad("method.h_param", m.h_param, f"free for the cell {a.cell!r} (tanh knows which "
                 "coordinates rnn, gru and lstm bound)")
        if m.penalty == "kl" and m.name in ("admm", "alm"):
            _bad("method.penalty", m.penalty, f"l2 or l2+kl for {m.name} (its duals act on the "
                 "l2 term only; kl alone is for method=penalty)")
        if "kl" in m.penalty and m.slots != "fixed_first":
            _bad("method.penalty", m.penalty, "l2 with method.slots=all_free (the KL term reads the "
                 "next block's first input, and the slot after the last block has none)")
    if method.check is not None:
        method.check(m)

    if isinstance(t.seed, bool) or not 0 <= t.seed <= SEED_MAX:
        _bad("train.seed", t.seed, f"an integer from 0 to 2**64 - 1 ({SEED_MAX})")
    choice("dataset.source", d.source, tuple(DATASET_READS))
    choice("dataset.level", d.level, LEVELS)
    if d.tokens is not None:
        choice("dataset.tokens", d.tokens, TOKENS + ("null",))
    reads = DATASET_COMMON + DATASET_READS[d.source]
    for key in d:
        if key not in reads and not d._get_node(key)._is_none():
            raise UserError(f"dataset.{key}: {d[key]!r} is not read by dataset {d.name} (source {d.source} "
                            f"reads {', '.join(DATASET_READS[d.source])}); leave it null, or choose a dataset "
                            "that reads it")
    if d.vocab_size is not None and d.vocab_size < 2:
        _bad("dataset.vocab_size", d.vocab_size, "an integer >= 2 or null")
    fracs = [(k, d[k]) for k in ("train_frac", "valid_frac") if d[k] is not None]
    for key, value in fracs:
        if not (math.isfinite(value) and 0 < value < 1):
            _bad(f"dataset.{key}", value, "a number in (0, 1)")
    if len(fracs) == 2 and d.train_frac + d.valid_frac >= 1:
        _bad("dataset.valid_frac", d.valid_frac,
             f"a number below {1 - d.train_frac:g} (train_frac + valid_frac < 1, the rest is test)")
    if d.source == "lag":
        from tprop_exp.data.lag import check_keys
        check_keys(d.lag, d.symbols, d.copy_prob, d.length, d.seed)
    positive("seeds", cfg.seeds)
    lg = cfg.get("logger")
    if isinstance(lg, DictConfig):  # an untyped group: its keys are checked here (run/logger.py reads them)
        reads = LOGGER_KEYS.get(lg.get("name"))
        if reads is None:
            _bad("logger.name", lg.get("name"), "one of " + ", ".join(LOGGER_KEYS))
        extra = [k for k in lg if k not in reads]
        if extra:
            raise UserError(f"unknown key logger.{extra[0]} (logger {lg.name} reads {', '.join(reads)})")


def authors_rules(m: BTPropConf, a: DictConfig) -> None:
    """The keys of SPEC §6's rules, and the combinations the authors' code refuses."""
    from tprop_exp.core import tprnn
    for key, allowed in (("slots", tprnn.SLOTS), ("dual_update", tprnn.DUAL_UPDATES)):
        if getattr(m, key) not in allowed:
            _bad(f"method.{key}", getattr(m, key), "one of " + ", ".join(allowed))
    if m.init == "tprnn_mb" and registry.cell(a.cell, a._target_).parts > 1:
        raise UserError(f"method.init: 'tprnn_mb' is not allowed with arch.cell={a.cell}; the authors' "
                        "-mb_init is for an RNN or a GRU only (their code asserts it): use tprnn_zero")


def method_config(node: DictConfig, schema: type) -> MethodConf:
    """The method node as its schema's dataclass: a method of one's own whose
    YAML has no schema in its defaults is checked here (unknown keys, types)."""
    typed = OmegaConf.get_type(node)
    if isinstance(typed, type) and issubclass(typed, schema):
        return OmegaConf.to_object(node)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except oe.ConfigKeyError as e:
        raise UserError(f"unknown key method.{e.key} (the keys of {schema.__name__})") from None
    except oe.ValidationError as e:
        raise UserError(f"method.{e.key}: {e.msg.splitlines()[0]}") from None


# ---------------------------------------------------------------- identity

def _excluded(schema=Config, prefix=""):
    """Dotted keys marked identity=False in the dataclasses above."""
    out = []
    for f in fields(schema):
        if not f.metadata.get("identity", True):
            out.append(prefix + f.name)
        elif is_dataclass(f.default_factory if f.default_factory is not None else None):
            out += _excluded(f.default_factory, f"{prefix}{f.name}.")
    return out


def _added(schema=Config, prefix=""):
    """{dotted key: default} of the keys marked `added` (core/registry.py)."""
    out = {}
    for f in fields(schema):
        if f.metadata.get("added"):
            out[prefix + f.name] = f.default
        elif is_dataclass(f.default_factory if f.default_factory is not None else None):
            out.update(_added(f.default_factory, f"{prefix}{f.name}."))
    return out


EXCLUDED = tuple(_excluded())
ADDED = _added()


def identity(config: dict) -> dict:
    """A resolved config (dict) less the keys that do not change the result."""
    cfg = json.loads(json.dumps(config))
    cfg.pop("hydra", None)
    for key in EXCLUDED:
        *parents, leaf = key.split(".")
        node = cfg
        for k in parents:
            node = node.get(k) or {}
        node.pop(leaf, None)
    method = cfg.get("method") or {}
    method.pop("_target_", None)  # where its code lives, not what it computes
    registry.load(None, "method")
    entry = registry.METHODS.get(method.get("name"))  # None: not registered here
    added = dict(ADDED)
    if entry is not None:
        added.update({f"method.{k}": v for k, v in _added(entry.schema).items()})
        if entry.reads is not None:  # e.g. BPTT reads none of the BTPROP keys
            cfg["method"] = {k: v for k, v in method.items() if k in entry.reads}
    for key, default in added.items():  # added keys at their default: as before they existed
        *parents, leaf = key.split(".")
        node = cfg
        for k in parents:
            node = node.get(k) or {}
        if leaf in node and node[leaf] == default:
            del node[leaf]
    return cfg


def run_hash(config: dict) -> str:
    text = json.dumps(identity(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_folder_name(config: dict, limit: int = 40) -> str:
    """`<method>-K<block size>[-h<h-steps>]-<cell><hidden>-<dataset>-<hash>`, filesystem-safe."""
    m, d, a = config.get("method", {}), config.get("dataset", {}), config.get("arch", {})
    parts = [m.get("name"), m.get("mode") == "batch" and "batch", f"K{m.get('block_size')}"]
    if m.get("name") != "bptt" and m.get("h_steps") is not None:
        parts.append(f"h{m.get('h_steps')}")
    parts += [f"{a.get('cell')}{a.get('hidden_size')}", d.get("name")]
    prefix = "-".join(str(p) for p in parts if p)
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix)[:limit].strip("-_.")
    return f"{prefix}-{run_hash(config)}"


def differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every identity key that differs (dotted keys)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out
    a, b = flat(identity(old)), flat(identity(new))
    missing = object()
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, missing) != b.get(k, missing)]
