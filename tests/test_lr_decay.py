"""train.lr_decay: the learning rate shrinks after an epoch whose validation
NLL is not below the best so far; any improvement, however small, counts."""
import torch

from tprop_exp.core.optim import plateau


def test_any_improvement_counts_and_none_decays():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = plateau(opt, 0.5)
    lrs = []
    # 2.0 → 1.99999 is a 5e-6 relative improvement (below torch's default 1e-4 threshold)
    for nll in (2.0, 1.99999, 1.99999, 2.5, 1.9):
        sched.step(nll)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.25, 0.25]
