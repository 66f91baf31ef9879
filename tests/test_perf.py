"""The speed switches change no result: train.compile (BTPROP's per-chunk
terms under torch.compile) and the fused/foreach optimizers.

On a CPU the test compiles with the aot_eager backend (it traces and runs
the same graph as inductor would be given, without inductor's slow C++
build), so it checks that compiling the chunk terms keeps every number.
"""
import torch

from tprop_exp import btprop

from helpers import params, run_cfg, sgd, stream, tiny_model


def btprop_epoch(compiled):
    btprop.compile_terms(compiled, backend="aot_eager")
    try:
        model = tiny_model("lstm")
        cfg = run_cfg(batch_size=4, clip=0.5, name="admm", mode="minibatch", block_size=3,
                      h_steps=2, chunk_blocks=2, u_start_epoch=1)
        stats = btprop.train_epoch(model, sgd(model, 0.3, 0.5), stream(60), cfg, {})
        return params(model), stats
    finally:
        btprop.compile_terms(False)


def test_compile_switch_changes_no_result():
    (p_eager, s_eager), (p_comp, s_comp) = btprop_epoch(False), btprop_epoch(True)
    assert not torch.equal(p_eager, params(tiny_model("lstm")))  # it trained
    torch.testing.assert_close(p_comp, p_eager, rtol=0, atol=1e-12)
    for key in s_eager:
        assert abs(s_comp[key] - s_eager[key]) < 1e-12, key
    assert btprop.TERMS["fn"] is btprop.chunk_terms  # the switch is off again
