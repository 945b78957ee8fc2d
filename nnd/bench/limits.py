"""What limits the train step's fraction of the matmul peak: op counts, probes, a list.

Only measured things go in; what is inferred from them is labelled an estimate.

- :func:`flops_by_kind`: FLOP of a function's jaxpr by kind of op: convolutions
  (2·|out|·|kernel|/out-features), matrix products (2·|out|·contracted size) and the
  rest (one per output element, reductions one per input element; layout ops such
  as reshape, broadcast, slice, transpose none). Its total is set beside XLA's.
- :func:`probes`: compiled pieces of the step, timed round-robin with it by
  :mod:`nnd.bench.train`: the loss forward alone and forward+backward (the step less
  optimizer, EMA and metrics), a 3×3 convolution at the network's shape forward and
  forward+backward, the same at width 128 (the full VDM width), and the attention
  block forward+backward.
- :func:`limits`: from those timings, a breakdown of the step's time and the list of
  limits (and of candidates that the measurements rule out).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nnd import losses, models
from nnd.bench import machine

__all__ = ["flops_by_kind", "probes", "limits", "markdown"]

# Ops that only move or relabel data: no FLOP counted.
_LAYOUT = frozenset({
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "rev",
    "convert_element_type", "copy", "copy_p", "iota", "bitcast_convert_type",
    "device_put", "sharding_constraint", "stop_gradient", "split",
})
_REDUCE = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                     "argmin", "reduce_and", "reduce_or", "cumsum", "cumprod", "cummax",
                     "cumlogsumexp", "cummin", "reduce_precision"})


def _size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ()) or ()))


def _subjaxprs(params) -> list:
    """The jaxprs among an equation's parameters (jit, scan, cond, custom_jvp, ...)."""
    out = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds a Jaxpr
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                out.append(inner)
    return out


def _count(jaxpr, mult: float, totals: dict) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        subs = _subjaxprs(eqn.params)
        if subs:
            if name == "cond":  # one branch runs: count the dearest
                branch_totals = []
                for sub in subs:
                    t = {k: 0.0 for k in totals}
                    _count(sub, mult, t)
                    branch_totals.append(t)
                best = max(branch_totals, key=lambda t: sum(v for k, v in t.items()
                                                            if not k.startswith("ops_")))
                for k, v in best.items():
                    totals[k] += v
            else:
                inner = mult * (eqn.params.get("length", 1) if name == "scan" else 1)
                for sub in subs:
                    _count(sub, inner, totals)
            continue
        out = sum(_size(v.aval) for v in eqn.outvars)
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_feature = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            totals["convolution"] += mult * 2.0 * out * math.prod(rhs) / out_feature
            totals["ops_convolution"] += mult
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            totals["dot"] += mult * 2.0 * out * math.prod(lhs[d] for d in lhs_contract)
            totals["ops_dot"] += mult
        elif name in _LAYOUT:
            totals["ops_layout"] += mult
        else:
            n = sum(_size(v.aval) for v in eqn.invars) if name in _REDUCE else out
            totals["other"] += mult * n
            totals["ops_other"] += mult


def flops_by_kind(fn, *args) -> dict:
    """FLOP of ``fn(*args)`` by kind of op, counted on its jaxpr (a model, not XLA's count).

    Returns convolution, dot, other and total FLOP, the matmul-class share
    (convolution + dot over total) and the number of ops of each kind.
    """
    closed = jax.make_jaxpr(fn)(*args)
    totals = {"convolution": 0.0, "dot": 0.0, "other": 0.0, "ops_convolution": 0.0,
              "ops_dot": 0.0, "ops_other": 0.0, "ops_layout": 0.0}
    _count(closed.jaxpr, 1.0, totals)
    total = totals["convolution"] + totals["dot"] + totals["other"]
    return {"convolution": totals["convolution"], "dot": totals["dot"], "other": totals["other"],
            "total": total, "matmul_share": (totals["convolution"] + totals["dot"]) / total,
            "ops": {k[4:]: int(v) for k, v in totals.items() if k.startswith("ops_")}}


def _compiled_timed(name, fn, *args) -> machine.Timed:
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = compiled(*args)
        jax.block_until_ready(out)

    return machine.Timed(name, run, float(cost.get("flops", float("nan"))),
                         float(cost.get("bytes accessed", float("nan"))))


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_probes(batch: int, hw, width: int, label: str):
    kx, kw, kg = jax.random.split(jax.random.key(width), 3)
    x = jax.random.normal(kx, (batch, *hw, width), jnp.float32)
    w = jax.random.normal(kw, (3, 3, width, width), jnp.float32) / (3 * math.sqrt(width))
    g = jax.random.normal(kg, (batch, *hw, width), jnp.float32)

    def fwd_bwd(x, w, g):
        y, vjp = jax.vjp(_conv, x, w)
        return y, vjp(g)

    shape = f"[{batch},{hw[0]},{hw[1]},{width}]→{width}"
    return [
        (_compiled_timed(f"conv 3×3 {shape} forward", _conv, x, w),
         {"probe": f"conv_{label}_forward", "width": width}),
        (_compiled_timed(f"conv 3×3 {shape} forward+backward", fwd_bwd, x, w, g),
         {"probe": f"conv_{label}_forward_backward", "width": width}),
    ]


def probes(run, state, batch_x, key, *, width: int, batch: int) -> list:
    """(Timed, meta) pairs, compiled, for :mod:`nnd.bench.train` to time with the step.

    ``state`` is copied: the step donates its own.
    """
    model, exp = run["model"], run["experiment"]
    params = jax.tree.map(jnp.copy, state.params)
    hw = tuple(run["batches"].shape[:2])

    def loss(params, x, key):
        key_loss, key_dropout = jax.random.split(key)

        def eps_fn(x_t, t):
            return model.apply({"params": params}, x_t, t, train=True,
                               rngs={"dropout": key_dropout})

        loss_B, _ = losses.objective(eps_fn, x, key_loss, process=exp.process, q=exp.q,
                                     p=exp.p, num_steps=exp.num_steps)
        return jnp.mean(loss_B)

    out = [
        (_compiled_timed("loss forward", loss, params, batch_x, key), {"probe": "forward"}),
        (_compiled_timed("loss forward+backward", jax.value_and_grad(loss), params, batch_x, key),
         {"probe": "forward_backward"}),
    ]
    out += _conv_probes(batch, hw, width, "net")
    if width < 128:
        out += _conv_probes(batch, hw, 128, "wide")[1:]
    h = jax.random.normal(jax.random.key(3), (batch, *hw, width), jnp.float32)
    attn = models.AttnBlock()
    attn_params = attn.init(jax.random.key(4), h)

    def attn_fwd_bwd(p, h):
        return jax.value_and_grad(lambda p, h: jnp.sum(attn.apply(p, h) * h),
                                  argnums=(0, 1))(p, h)

    out.append((_compiled_timed(f"attention block [{batch},{hw[0] * hw[1]},{width}] "
                                "forward+backward", attn_fwd_bwd, attn_params, h),
                {"probe": "attention_forward_backward"}))
    return out


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 else f"{x:.1%}"


def limits(row: dict, op_flops: dict, probe_rows: list, peak: dict, stream: dict, *,
           width: int, batch: int, goal: float) -> dict:
    """Breakdown of the step's time, the limits and what the measurements rule out.

    Each item is ``{"basis": "measured" | "estimate", "text": ...}``. Limits are
    listed only when the step's fraction of the matmul peak is below ``goal``.
    """
    by = {p["probe"]: p for p in probe_rows}
    peak_rate = peak["flops_per_second"]
    step = row["seconds_per_step"]
    frac = row["fraction_of_matmul_peak"]
    conv_fb = by["conv_net_forward_backward"]
    conv_rate = conv_fb["flops_per_second"]
    fb = by["forward_backward"]["seconds"]
    attn = by["attention_forward_backward"]["seconds"]
    t_conv = op_flops["convolution"] / conv_rate
    t_opt = max(step - fb, 0.0)
    t_rest = fb - t_conv - attn
    breakdown = [
        {"part": "convolutions", "seconds": t_conv, "basis": "estimate",
         "how": "their jaxpr FLOP at the rate of the convolution alone (forward+backward)"},
        {"part": "attention block", "seconds": attn, "basis": "estimate",
         "how": "the block timed alone, forward+backward"},
        {"part": "rest of forward+backward", "seconds": t_rest, "basis": "estimate",
         "how": "loss forward+backward minus the two above: group norm, SiLU, dropout, "
                "embedding, loss, random numbers"},
        {"part": "optimizer, EMA, metrics", "seconds": t_opt, "basis": "measured",
         "how": "step minus loss forward+backward, both timed"},
    ]
    for b in breakdown:
        b["share"] = b["seconds"] / step
    found, ruled_out = [], []

    def add(target, basis, text):
        target.append({"basis": basis, "text": text})

    conv_frac = conv_fb["fraction_of_matmul_peak"]
    conv_fwd_frac = by["conv_net_forward"]["fraction_of_matmul_peak"]
    if conv_frac < goal:
        add(found, "measured", f"The 3×3 convolution alone at the network's shape "
            f"([{batch},H,W,{width}]→{width}) reaches {_pct(conv_frac)} of the matmul peak "
            f"forward+backward ({_pct(conv_fwd_frac)} forward): the network's main op is "
            "below the goal by itself.")
    else:
        add(ruled_out, "measured", f"The convolution alone reaches {_pct(conv_frac)} of the "
            "matmul peak forward+backward: the op itself could meet the goal.")
    wide = by.get("conv_wide_forward_backward")
    if wide is not None:
        wide_frac = wide["fraction_of_matmul_peak"]
        if wide_frac > 1.2 * conv_frac:
            add(found, "measured", f"At width 128 the same convolution reaches "
                f"{_pct(wide_frac)}: the reduced width (a contraction of 9·C = {9 * width}, "
                f"{width} outputs per pixel) is a limit.")
        else:
            add(ruled_out, "measured", f"Width: at 128 channels the convolution reaches "
                f"{_pct(wide_frac)} (vs {_pct(conv_frac)}), no better.")
    attn_frac = by["attention_forward_backward"]["fraction_of_matmul_peak"]
    extras = {
        "attention block": f"; it runs at {_pct(attn_frac)} of the matmul peak, and matrix "
                           f"products are {_pct(op_flops['dot'] / op_flops['total'])} of the "
                           "step's FLOP counted on the jaxpr",
        "rest of forward+backward": f"; these ops are "
                                    f"{_pct(op_flops['other'] / op_flops['total'])} of the "
                                    "FLOP counted on the jaxpr"}
    for b in breakdown[1:]:
        if b["share"] > 0.1:
            extra = extras.get(b["part"], "")
            add(found, b["basis"], f"{b['part'].capitalize()}: {_pct(b['share'])} of the step "
                f"({b['seconds'] * 1e3:.1f} ms; {b['how']}{extra}).")
    scaled = by.get("step_scaled_batch")
    if scaled is not None:
        s_frac, s_batch = scaled["fraction_of_matmul_peak"], scaled["batch"]
        if s_frac > 1.1 * frac:
            add(found, "measured", f"Batch: at batch {s_batch} the step reaches "
                f"{_pct(s_frac)} of the peak (vs {_pct(frac)} at {batch}): the batch of "
                f"{batch} is too small to fill the machine.")
        else:
            add(ruled_out, "measured", f"Batch: at batch {s_batch} the step reaches "
                f"{_pct(s_frac)} of the peak (vs {_pct(frac)} at {batch}), no better.")
    intensity = row["flops_per_step"] / row["bytes_per_step"]
    balance = peak_rate / stream["bytes_per_second"]
    bound = "memory-bound" if intensity < balance else "compute-bound"
    add(found if intensity < balance else ruled_out, "estimate",
        f"Memory traffic: XLA counts {row['bytes_per_step'] / 1e9:.2f} GB accessed per step, "
        f"{intensity:.1f} FLOP/byte against a machine balance of {balance:.1f} FLOP/byte "
        "(matmul peak over the measured stream bandwidth); if every counted byte went to "
        f"memory the step would be {bound} (caches make real traffic smaller).")
    return {"fraction_of_matmul_peak": frac, "goal": goal, "met": frac >= goal,
            "time_breakdown": breakdown, "limits": [] if frac >= goal else found,
            "ruled_out": ruled_out}


def markdown(analysis: dict) -> str:
    """The probes, the time breakdown and the limits as Markdown."""
    lines = ["| probe | ms | GFLOP | GFLOP/s | of matmul peak |", "|---|---|---|---|---|"]
    for p in analysis["probes"]:
        lines.append(f"| {p['name']} | {p['seconds'] * 1e3:.2f} | {p['flops'] / 1e9:.3f} | "
                     f"{p['flops_per_second'] / 1e9:.1f} | {p['fraction_of_matmul_peak']:.1%} |")
    ops = analysis["op_flops"]
    lim = analysis["limits"]
    lines += ["", f"FLOP by kind (jaxpr count, {ops['total'] / 1e9:.2f} GFLOP): convolution "
              f"{ops['convolution'] / ops['total']:.1%}, matrix product "
              f"{ops['dot'] / ops['total']:.1%}, other {ops['other'] / ops['total']:.1%}.", "",
              "| part of the step | ms | share | basis |", "|---|---|---|---|"]
    for b in lim["time_breakdown"]:
        lines.append(f"| {b['part']} | {b['seconds'] * 1e3:.1f} | {b['share']:.0%} | "
                     f"{b['basis']}: {b['how']} |")
    lines.append("")
    if lim["met"]:
        lines.append(f"The step reaches {lim['fraction_of_matmul_peak']:.1%} of the matmul peak "
                     f"(goal ≥ {lim['goal']:.0%}): met.")
    else:
        lines.append(f"The step reaches {lim['fraction_of_matmul_peak']:.1%} of the matmul peak "
                     f"(goal ≥ {lim['goal']:.0%}). What limits it:")
        lines += [f"- [{x['basis']}] {x['text']}" for x in lim["limits"]]
    if lim["ruled_out"]:
        lines += ["", "Ruled out or not limiting:"]
        lines += [f"- [{x['basis']}] {x['text']}" for x in lim["ruled_out"]]
    return "\n".join(lines)
