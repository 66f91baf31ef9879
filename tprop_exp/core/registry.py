"""What training methods and recurrent cells exist: each registers itself.

A method is one module that calls `register_method(...)` when imported: its
training core (`train_epoch`, `end_epoch`), the dataclass of its `method.*`
keys, and which of those keys change what it computes. A cell is likewise one
`register_cell(...)` call. The built-in methods (tprop_exp/core/methods/) and
cells (tprop_exp/core/model.py) register on import; a method or cell of your
own names its module in its YAML file as `_target_`, and the config checks
import it before anything runs:

    # DIR/method/mymethod.yaml              # DIR/arch/mycell.yaml
    _target_: mymethod   # the module       _target_: mycell
    name: mymethod                          cell: mycell
    ...                                     hidden_size: 64 ...

README "Adding a method" walks through both.
"""
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple

from tprop_exp import UserError


def volatile(default: Any) -> Any:
    """A config key that does not change what a run computes (not part of its identity)."""
    return field(default=default, metadata={"identity": False})


def added(default: Any) -> Any:
    """A config key added after runs were recorded without it: at this default it
    computes what those runs computed, so it is left out of a run's identity
    and their folders are still found (run/schema.py identity)."""
    return field(default=default, metadata={"added": True})


@dataclass
class MethodConf:
    """The keys every method has; a method's own dataclass extends it.

    `_target_` names the module that registers the method: needed only for a
    method from outside tprop_exp, and never part of a run's identity.
    """
    _target_: Optional[str] = volatile(None)
    name: str = "bptt"
    mode: str = "minibatch"   # minibatch | batch (full batch)
    block_size: int = 35      # K


@dataclass(frozen=True)
class Method:
    """A registered training method.

    train_epoch(model, theta, stream, cfg, state, epoch, pos, on_update) -> stats
        one pass over the training stream (stats hold "tokens"; see run/trainer.py);
    end_epoch(state, cfg) -> None: what carries into the next epoch;
    schema: the dataclass of its method.* keys (a MethodConf);
    reads: the method.* keys that change what it computes (None: all of them);
    check(method_cfg): raises UserError for settings it cannot run;
    shares: how core/distributed.py spreads it over processes ("streams" as
        BPTT, "blocks" as BTPROP; None: one process only);
    update: BTPROP's one update over a set of blocks (core/btprop.py), for
        the distributed batch mode.
    """
    name: str
    train_epoch: Callable
    end_epoch: Callable
    schema: type = MethodConf
    reads: Optional[Tuple[str, ...]] = None
    check: Optional[Callable] = None
    shares: Optional[str] = None
    update: Optional[Callable] = None


METHODS: dict = {}
CELLS: dict = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: `make(hidden_size, num_layers)` returns a module with
    torch.nn.RNN's interface, (input (T, n, d), state) -> (output, state),
    whose state is one tensor (L, n, d) or, with `parts=2`, a pair as an
    LSTM's (h, c)."""
    name: str
    make: Callable
    parts: int = 1


def register_cell(cell: Cell) -> Cell:
    CELLS[cell.name] = cell
    return cell


def _builtins() -> None:
    from . import methods, model  # noqa: F401  (the cells register in model)
    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")


def load(target: Optional[str], key: str) -> None:
    """Import the built-ins and, if given, the module `target` (a key's `_target_`)."""
    _builtins()
    if target:
        try:
            importlib.import_module(target)
        except ImportError as e:
            raise UserError(f"{key}._target_: cannot import {target!r} ({e}); "
                            "put its folder on PYTHONPATH") from None


def method(name: str, target: Optional[str] = None) -> Method:
    """The registered method `name` (importing `target` first if given)."""
    return _find(METHODS, "method", "name", name, target)


def cell(name: str, target: Optional[str] = None) -> Cell:
    """The registered cell `name` (importing `target` first if given)."""
    return _find(CELLS, "arch", "cell", name, target)


def _find(table: dict, group: str, key: str, name: str, target: Optional[str]) -> Any:
    load(target, group)
    if name not in table:
        raise UserError(f"{group}.{key}: {name!r} is not allowed; it must be one of "
                        f"{', '.join(sorted(table))} (or one of yours: set {group}._target_ to its module)")
    return table[name]
