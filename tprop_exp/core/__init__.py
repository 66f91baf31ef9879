"""core: the training mathematics (SPEC §1). The language model and its cells,
truncated BPTT and BTPROP (one module per method in core/methods/, the
objective and steps in btprop.py), the θ optimizer, evaluation with θ frozen,
and torch.distributed. Methods and cells register themselves (registry.py).

Imports: data, torch. Nothing here reads a Hydra config file, writes a
record or knows of run folders: it takes tensors, a model and a config
object, and returns numbers.
"""
