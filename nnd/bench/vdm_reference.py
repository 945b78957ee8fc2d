"""nnd's train step against a VDM ScoreUNet train step at matched size, on this machine.

The reference is written here from the architecture Kingma et al. (2021) published with
google-research/vdm (its ``ScoreUNet``), not vendored:

- input: the image and its base-2 Fourier features (exponents 6 and 7), a 3×3 convolution
  to width ``n_embd``; the time as the normalised log-SNR γ, sinusoidal features of
  1000·t through two swish Dense layers of width 4·n_embd;
- ``n_layer`` residual blocks at full resolution (outputs kept), a middle of block,
  single-head attention, block, then ``n_layer + 1`` blocks each taking one kept output
  concatenated; GroupNorm with flax's 32 groups, swish, 3×3 convolutions, the time
  projected without bias and added after the first convolution, dropout, a
  zero-initialised second convolution, a Dense shortcut where the width changes;
- out: GroupNorm, swish, a zero-initialised 3×3 convolution to the image's channels.

Its train step is VDM's continuous-time loss with a fixed linear γ schedule
(γ from -13.3 to 5, so dγ/dt is a constant; VDM learns γ with a small network whose
cost is negligible next to the U-Net), ε-prediction, antithetic times, Adam and an
exponential moving average of the parameters, as nnd's step has.

nnd's side is :func:`nnd.bench.train.network` (the cifar10 gaussian/gaussian config with
a VDM net of the same width and depth) with the model settings at their defaults
(``query_chunk = 0``: the automatic choice), unless ``--query-chunk`` says otherwise.
Both steps are compiled first, then timed in interleaved rounds (each round runs one
turn of each), so drift on a shared machine hits both alike; the ratio is nnd's median
over the reference's, with the spread of the per-round ratios.

Run::

    python -m nnd.bench.vdm_reference [--width 32] [--blocks 4] [--batch 32]
        [--rounds 7] [--query-chunk 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnd import paths
from nnd.bench import machine
from nnd.bench import train as bench_train

__all__ = ["ScoreUNetReference", "reference_step", "benchmark", "main"]

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0


class _ResnetBlock(nn.Module):
    out_ch: int
    p_dropout: float

    @nn.compact
    def __call__(self, x, cond, deterministic: bool):
        h = nn.Conv(self.out_ch, (3, 3))(nn.swish(nn.GroupNorm()(x)))
        h = h + nn.Dense(self.out_ch, use_bias=False, kernel_init=nn.initializers.zeros)(cond)[
            :, None, None, :]
        h = nn.Dropout(self.p_dropout)(nn.swish(nn.GroupNorm()(h)), deterministic=deterministic)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch)(x)
        return x + h


class _AttnBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = nn.GroupNorm()(x).reshape(b, height * width, c)
        h = nn.MultiHeadDotProductAttention(num_heads=1)(h, h)
        return x + h.reshape(b, height, width, c)


def _fourier_features(z, start: int = 6, stop: int = 8):
    freqs = 2.0 ** jnp.arange(start, stop, dtype=z.dtype) * 2 * math.pi
    angles = (z[..., None] * freqs).reshape(*z.shape[:-1], -1)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


def _timestep_embedding(t_B, dim: int):
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = t_B[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


class ScoreUNetReference(nn.Module):
    """VDM's ScoreUNet (no attention in the blocks, as its CIFAR-10 config), ε-prediction."""

    n_embd: int = 32
    n_layer: int = 4
    p_dropout: float = 0.1

    @nn.compact
    def __call__(self, z, g_t, deterministic: bool = True):
        t = (g_t - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN)
        cond = _timestep_embedding(t * 1000.0, self.n_embd)
        cond = nn.swish(nn.Dense(4 * self.n_embd)(cond))
        cond = nn.swish(nn.Dense(4 * self.n_embd)(cond))
        h = nn.Conv(self.n_embd, (3, 3))(jnp.concatenate([z, _fourier_features(z)], -1))
        block = lambda: _ResnetBlock(self.n_embd, self.p_dropout)  # noqa: E731
        hs = [h]
        for _ in range(self.n_layer):
            hs.append(block()(hs[-1], cond, deterministic))
        h = block()(hs[-1], cond, deterministic)
        h = _AttnBlock()(h)
        h = block()(h, cond, deterministic)
        for _ in range(self.n_layer + 1):
            h = block()(jnp.concatenate([h, hs.pop()], -1), cond, deterministic)
        h = nn.swish(nn.GroupNorm()(h))
        return nn.Conv(z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


def reference_step(model: ScoreUNetReference, tx, ema_rate: float = 0.9999):
    """The jitted step ``(params, ema, opt_state, x, key) -> (params, ema, opt_state, loss)``."""

    def loss_fn(params, x, key):
        key_t, key_eps, key_drop = jax.random.split(key, 3)
        b = x.shape[0]
        t = jnp.mod(jax.random.uniform(key_t) + jnp.arange(b) / b, 1.0)  # antithetic
        g_t = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t
        var = jax.nn.sigmoid(g_t)[:, None, None, None]
        eps = jax.random.normal(key_eps, x.shape)
        z_t = jnp.sqrt(1.0 - var) * x + jnp.sqrt(var) * eps
        eps_hat = model.apply({"params": params}, z_t, g_t, deterministic=False,
                              rngs={"dropout": key_drop})
        per_example = 0.5 * (GAMMA_MAX - GAMMA_MIN) * jnp.sum(jnp.square(eps - eps_hat), (1, 2, 3))
        return jnp.mean(per_example)

    def step(params, ema, opt_state, x, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p, ema, params)
        return params, ema, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def _count(params) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))


def _reference_timed(width: int, blocks: int, batch: int) -> tuple[machine.Timed, int, float]:
    model = ScoreUNetReference(n_embd=width, n_layer=blocks)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, 32, 32, 3)), jnp.float32)
    params = model.init(jax.random.key(0), x, jnp.zeros((batch,)))["params"]
    tx = optax.adamw(2e-4, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0)
    cell = {"state": (params, jax.tree.map(jnp.copy, params), tx.init(params)), "i": 0}
    jitted = reference_step(model, tx)
    start = time.perf_counter()
    compiled = jitted.lower(*cell["state"], x, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - start

    def run(n: int) -> None:
        loss = None
        for _ in range(n):
            p, e, o, loss = compiled(*cell["state"], x, jax.random.fold_in(jax.random.key(1), cell["i"]))
            cell["state"], cell["i"] = (p, e, o), cell["i"] + 1
        jax.block_until_ready((cell["state"], loss))

    return machine.Timed("VDM ScoreUNet reference step", run), _count(params), compile_s


def _nnd_timed(width: int, blocks: int, batch: int, query_chunk: int, workdir: str):
    run = bench_train.network("gaussian", width=width, blocks=blocks, batch=batch,
                              workdir=workdir, query_chunk=query_chunk)
    batch_x = jax.make_array_from_process_local_data(run.batch_sharding, run.batches(0))
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = run.step_fn.lower(run.state, batch_x, key).compile()
    compile_s = time.perf_counter() - start
    runner = bench_train.step_runner(compiled, run.state, batch_x, key)
    run.manager.close()
    label = "default" if query_chunk == 0 else f"query_chunk = {query_chunk}"
    return machine.Timed(f"nnd train step ({label})", runner), _count(run.state.params), compile_s


def benchmark(*, width: int = 32, blocks: int = 4, batch: int = 32, rounds: int = 7,
              query_chunks=(0,), min_turn_seconds: float = 2.0, log=print) -> dict:
    """Both steps compiled, calibrated, then timed in ``rounds`` interleaved rounds."""
    reference, ref_params, ref_compile = _reference_timed(width, blocks, batch)
    entries, rows = [reference], []
    with tempfile.TemporaryDirectory() as workdir:
        for chunk in query_chunks:
            timed, count, compile_s = _nnd_timed(width, blocks, batch, chunk, workdir)
            entries.append(timed)
            rows.append({"query_chunk": chunk, "parameters": count, "compile_seconds": compile_s})
        log(f"compiled: reference {ref_compile:.1f} s, nnd "
            + ", ".join(f"{r['compile_seconds']:.1f} s" for r in rows))
        machine.calibrate(entries, min_calls=1, min_turn_seconds=min_turn_seconds)
        machine.time_round_robin(entries, repeats=rounds)
    ref_ms = [s * 1e3 for s in reference.seconds]
    for row, timed in zip(rows, entries[1:]):
        ms = [s * 1e3 for s in timed.seconds]
        ratios = [a / b for a, b in zip(ms, ref_ms)]
        row.update(name=timed.name, ms_per_step=statistics.median(ms), ms_per_round=ms,
                   ratio=statistics.median(ms) / statistics.median(ref_ms),
                   ratio_per_round=ratios, ratio_min=min(ratios), ratio_max=max(ratios))
    return {"machine": machine.describe(),
            "config": {"width": width, "blocks": blocks, "batch": batch, "rounds": rounds,
                       "calls_per_turn": [e.calls for e in entries]},
            "reference": {"name": reference.name, "parameters": ref_params,
                          "compile_seconds": ref_compile, "ms_per_step": statistics.median(ref_ms),
                          "ms_per_round": ref_ms},
            "nnd": rows}


def markdown(report: dict) -> str:
    c, ref = report["config"], report["reference"]
    lines = [f"Train step at width {c['width']}, {c['blocks']} blocks, batch {c['batch']}, "
             f"{c['rounds']} interleaved rounds; {machine.machine_line(report['machine'])}",
             "",
             "| step | parameters | ms/step (median) | ratio to VDM's step (median; per-round min–max) |",
             "|---|---|---|---|",
             f"| {ref['name']} | {ref['parameters']:,} | {ref['ms_per_step']:.0f} | 1 |"]
    for r in report["nnd"]:
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['ms_per_step']:.0f} | "
                     f"{r['ratio']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nnd.bench.vdm_reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--query-chunk", type=int, action="append",
                        help="nnd's query_chunk (repeatable; default: 0, the automatic choice)")
    parser.add_argument("--min-turn-seconds", type=float, default=2.0)
    parser.add_argument("--out", help="JSON file (local or gs://)")
    args = parser.parse_args(argv)
    report = benchmark(width=args.width, blocks=args.blocks, batch=args.batch, rounds=args.rounds,
                       query_chunks=tuple(args.query_chunk or (0,)),
                       min_turn_seconds=args.min_turn_seconds)
    print(markdown(report))
    if args.out:
        paths.write(paths.get(args.out), json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
