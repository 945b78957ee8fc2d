"""nnd.bench.vdm_reference: the reference network's shape and a tiny interleaved run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd.bench import vdm_reference


def test_the_reference_is_vdms_score_unet_at_matched_size():
    model = vdm_reference.ScoreUNetReference(n_embd=32, n_layer=4)
    x = jnp.zeros((2, 32, 32, 3))
    params = model.init(jax.random.key(0), x, jnp.zeros((2,)))["params"]
    # 4 down + 2 middle + 5 up residual blocks, one attention block, in and out convolutions
    blocks = sorted(k for k in params if k.startswith("_ResnetBlock"))
    assert len(blocks) == 11 and "_AttnBlock_0" in params
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3 + 3 * 2 * 2, 32)  # image + Fourier features
    count = sum(np.prod(a.shape) for a in jax.tree.leaves(params))
    assert count == 337_027  # what the previous side-by-side counted in VDM's own ScoreUNet
    out = model.apply({"params": params}, x, jnp.zeros((2,)))
    assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0  # zero-initialised output


@pytest.mark.slow  # two train steps compiled and timed
def test_a_tiny_interleaved_run_reports_ratios_per_round():
    report = vdm_reference.benchmark(width=32, blocks=1, batch=2, rounds=2, query_chunks=(0, -1),
                                     min_turn_seconds=0.0, log=lambda _: None)  # GroupNorm: 32 groups
    assert report["reference"]["ms_per_step"] > 0 and len(report["reference"]["ms_per_round"]) == 2
    assert [r["query_chunk"] for r in report["nnd"]] == [0, -1]
    for row in report["nnd"]:
        assert len(row["ratio_per_round"]) == 2 and row["ratio_min"] <= row["ratio"] * 1.0001
        assert row["ratio_min"] <= row["ratio_max"] and row["ms_per_step"] > 0
    assert "ratio to VDM's step" in vdm_reference.markdown(report)
