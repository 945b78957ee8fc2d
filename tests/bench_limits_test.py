"""nnd.bench.limits: FLOP by kind against closed forms; the limits list from given timings."""

import jax
import jax.numpy as jnp
import pytest

from nnd.bench import limits


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_flops_by_kind_closed_forms():
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 5))
    a, b = jnp.ones((4, 6)), jnp.ones((6, 7))

    def fn(x, w, a, b):
        y = _conv(x, w)                        # 2 · |out| · 3·3·3 = 2 · 640 · 27
        z = jnp.sin(a @ b)                     # dot 2·4·7·6; sin 28
        s = jnp.sum(z.reshape(-1))             # reshape 0; reduce 28 (its input)

        def body(c, _):
            return c * 2.0, None               # 5 per step, 3 steps

        c, _ = jax.lax.scan(body, jnp.ones(5), None, length=3)
        return y, s, c

    got = limits.flops_by_kind(fn, x, w, a, b)
    assert got["convolution"] == 2 * 640 * 27
    assert got["dot"] == 2 * 4 * 7 * 6
    assert got["other"] == 28 + 28 + 15
    assert got["total"] == got["convolution"] + got["dot"] + got["other"]
    assert got["matmul_share"] == pytest.approx((34560 + 336) / got["total"])
    assert got["ops"]["convolution"] == 1 and got["ops"]["dot"] == 1
    assert got["ops"]["layout"] >= 1
    # Under jit the same ops sit in a sub-jaxpr: same count.
    assert limits.flops_by_kind(jax.jit(fn), x, w, a, b) == got


def test_flops_by_kind_gradient_convolutions():
    """Forward+backward of a convolution: two more convolutions of the same FLOP."""
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 4))
    fwd = limits.flops_by_kind(_conv, x, w)["convolution"]
    both = limits.flops_by_kind(jax.grad(lambda x, w: jnp.sum(_conv(x, w)), argnums=(0, 1)), x, w)
    assert both["convolution"] == pytest.approx(3 * fwd, rel=0.01)


def _inputs(frac_step: float):
    peak = {"flops_per_second": 100e9, "name": "matmul 2048"}
    step = 1.0
    row = {"seconds_per_step": step, "flops_per_step": frac_step * 100e9 * step,
           "bytes_per_step": 5e9, "fraction_of_matmul_peak": frac_step}
    op_flops = {"convolution": 30e9, "dot": 5e9, "other": 5e9, "total": 40e9,
                "matmul_share": 35 / 40, "ops": {"convolution": 10, "dot": 4, "other": 500,
                                                 "layout": 100}}

    def probe(name, seconds, frac, **meta):
        return {"probe": name, "name": name, "seconds": seconds, "flops": frac * 100e9 * seconds,
                "flops_per_second": frac * 100e9, "fraction_of_matmul_peak": frac, **meta}

    probes = [probe("forward", 0.3, 0.3), probe("forward_backward", 0.8, 0.35),
              probe("conv_net_forward", 0.01, 0.4), probe("conv_net_forward_backward", 0.03, 0.3),
              probe("conv_wide_forward_backward", 0.3, 0.8),
              probe("attention_forward_backward", 0.2, 0.1),
              probe("step_scaled_batch", 3.5, frac_step * 1.01, batch=128)]
    stream = {"bytes_per_second": 10e9}
    return row, op_flops, probes, peak, stream


def test_limits_below_goal_lists_measured_and_estimated_causes():
    row, op_flops, probes, peak, stream = _inputs(0.3)
    got = limits.limits(row, op_flops, probes, peak, stream, width=32, batch=32, goal=0.5)
    assert not got["met"] and got["limits"]
    assert {x["basis"] for x in got["limits"] + got["ruled_out"]} <= {"measured", "estimate"}
    texts = " ".join(x["text"] for x in got["limits"])
    assert "convolution alone" in texts and "width 128" in texts
    assert any(x["text"].startswith("Batch") for x in got["ruled_out"])  # 1.01× is no gain
    # The parts add up to the step: forward+backward split three ways, plus the optimizer.
    total = sum(b["seconds"] for b in got["time_breakdown"])
    assert total == pytest.approx(row["seconds_per_step"])
    assert got["time_breakdown"][0]["seconds"] == pytest.approx(30e9 / 30e9)
    analysis = {"probes": probes, "op_flops": op_flops, "limits": got}
    assert "What limits it" in limits.markdown(analysis)


def test_limits_at_goal_lists_none():
    row, op_flops, probes, peak, stream = _inputs(0.6)
    got = limits.limits(row, op_flops, probes, peak, stream, width=32, batch=32, goal=0.5)
    assert got["met"] and got["limits"] == []
