"""Training: state, the jitted train step, checkpoints and the loop.

The train step is one module-level pure function ``(state, batch, key) ->
(state, metrics)``, jitted once with shardings over a ``('data',)`` mesh of all
devices (batch split along it, state replicated) and the state donated. Its
loss is :func:`nnd.losses.objective` for the configured (q, p, K).

Keys: the root key ``key(seed)`` has independent streams: stream 0 for
initialisation, stream 2 for training (step s uses ``fold_in(stream, s)``),
stream 3 for samples, stream 4 for evaluation; data uses stream 1 (nnd.data).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from nnd import config as config_lib
from nnd import data, losses, models, pictures, samplers, summaries

__all__ = [
    "TrainState",
    "make_model",
    "make_optimizer",
    "init_state",
    "train_step",
    "make_mesh",
    "build",
    "restore_latest",
    "train_and_evaluate",
    "score_fn_from",
    "draw_samples",
    "picture_title",
    "save_picture",
]

INIT_STREAM, TRAIN_STREAM, SAMPLE_STREAM, EVAL_STREAM = 0, 2, 3, 4


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def make_model(config) -> nn.Module:
    m = config.model
    if m.name == "mlp":
        return models.MLP(hidden=m.hidden, depth=m.depth, embed_dim=m.embed_dim)
    if m.name == "vdm":
        return models.VDMNet(channels=m.channels, num_blocks=m.num_blocks,
                             embed_dim=m.embed_dim, dropout=m.dropout)
    if m.name == "unet":
        return models.UNet(channels=m.channels, channel_mult=tuple(m.channel_mult),
                           num_res_blocks=m.num_res_blocks,
                           attn_resolutions=tuple(m.attn_resolutions),
                           embed_dim=m.embed_dim, dropout=m.dropout)
    raise ValueError(f"config.model.name: unknown model {m.name!r}")


def make_optimizer(config):
    """(AdamW with linear warm-up then cosine decay after global-norm clipping, its schedule)."""
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, max(o.warmup_steps, 1), max(config.train.num_steps, o.warmup_steps + 1),
        end_value=0.1 * o.learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(schedule, weight_decay=o.weight_decay),
    ), schedule


def init_state(model, tx, key, example_x) -> TrainState:
    t = jnp.zeros((example_x.shape[0],), jnp.float32)
    params = model.init(key, example_x, t)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def train_step(state: TrainState, batch, key, *, model, tx, experiment, ema_decay: float):
    """One optimiser step on the eq. (5) objective; returns (state, metrics)."""

    key_loss, key_dropout = jax.random.split(key)

    def loss_fn(params):
        def eps_fn(x, t):
            return model.apply({"params": params}, x, t, train=True, rngs={"dropout": key_dropout})

        loss_B, t_B = losses.objective(
            eps_fn, batch, key_loss, process=experiment.process, q=experiment.q,
            p=experiment.p, num_steps=experiment.num_steps,
        )
        return jnp.mean(loss_B), (loss_B, t_B)

    (loss, (loss_B, t_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with warm-up (decay (1 + n)/(10 + n) until it reaches ema_decay), so early
    # samples are not dragged towards the initial parameters.
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    quartile_B = jnp.clip((t_B * 4).astype(jnp.int32), 0, 3)
    by_quartile = jnp.stack([
        jnp.sum(jnp.where(quartile_B == i, loss_B, 0.0)) / jnp.maximum(jnp.sum(quartile_B == i), 1)
        for i in range(4)
    ])
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    metrics = {"loss": loss, "grad_norm": grad_norm, "loss_by_quartile": by_quartile}
    return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics


def make_mesh(devices=None):
    """A 1-D ('data',) mesh over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                 options=options)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState):
    """Restores the latest checkpoint into the shardings of ``abstract_state``, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]


def build(config, workdir: str, mesh=None):
    """Everything a run needs: experiment, model, optimiser, mesh, jitted step, state.

    The state is restored from ``workdir/checkpoints`` if a checkpoint is there,
    else initialised; ``mesh`` defaults to all devices.
    """
    mesh = make_mesh() if mesh is None else mesh
    experiment = config_lib.resolve(config, num_devices=mesh.size)
    model = make_model(config)
    tx, schedule = make_optimizer(config)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    root = jax.random.key(config.seed)
    batches = data.make_batches(config)
    example = jnp.zeros((batches.local_batch,) + batches.shape, jnp.float32)
    init_fn = functools.partial(init_state, model, tx)
    abstract = jax.eval_shape(init_fn, jax.random.fold_in(root, INIT_STREAM), example)
    state_sharding = jax.tree.map(lambda _: replicated, abstract)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
    step_fn = jax.jit(
        functools.partial(train_step, model=model, tx=tx, experiment=experiment,
                          ema_decay=config.optim.ema_decay),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    manager = _checkpoint_manager(workdir, config)
    state = restore_latest(manager, abstract)
    if state is None:
        state = jax.jit(init_fn, out_shardings=state_sharding)(
            jax.random.fold_in(root, INIT_STREAM), example)
    return dict(experiment=experiment, model=model, schedule=schedule, mesh=mesh,
                batch_sharding=batch_sharding, step_fn=step_fn, manager=manager,
                state=state, root=root, batches=batches)


def _progress_picture(run, config, state, step: int, workdir: str):
    """Samples from the current EMA parameters, saved as ``workdir/samples/step_<N>.png``."""
    n = 1000 if len(run["batches"].shape) == 1 else 64
    key = jax.random.fold_in(jax.random.fold_in(run["root"], SAMPLE_STREAM), step)
    samples, nfe = draw_samples(run, config, state.ema_params, n, key)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    path = os.path.join(workdir, "samples", f"step_{step}.png")
    save_picture(samples, path, picture_title(config, run["experiment"], nfe=nfe) + f", step {step}")
    logging.info("step %d: sample picture %s", step, path)


def train_and_evaluate(config, workdir: str, mesh=None) -> TrainState:
    """Trains from scratch or resumes from ``workdir/checkpoints``; returns the final state."""
    os.makedirs(workdir, exist_ok=True)
    run = build(config, workdir, mesh)
    state, manager = run["state"], run["manager"]
    start = int(state.step)
    total = config.train.num_steps
    if start:
        logging.info("resumed from step %d in %s", start, workdir)
    train_root = jax.random.fold_in(run["root"], TRAIN_STREAM)
    writer = summaries.SummaryWriter(workdir, enabled=jax.process_index() == 0)
    pending = None  # metrics of the previous step, fetched one step late
    t_last, step_last = time.time(), start

    def report(step, metrics):
        nonlocal t_last, step_last
        host = jax.tree.map(np.asarray, metrics)
        loss = float(host["loss"])
        if not np.isfinite(loss) or not np.isfinite(float(host["grad_norm"])):
            raise FloatingPointError(
                f"step {step}: non-finite {'loss' if not np.isfinite(loss) else 'gradient norm'} "
                f"(loss={loss}, grad_norm={float(host['grad_norm'])})")
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        eta = (total - step) / max(rate, 1e-9)
        record = {"loss": loss, "grad_norm": float(host["grad_norm"]),
                  "lr": float(run["schedule"](step)),
                  "loss_by_quartile": [float(v) for v in host["loss_by_quartile"]],
                  "steps_per_s": rate, "examples_per_s": rate * config.data.batch_size}
        writer.write(step, record)
        logging.info("step %d/%d  loss %.4f  grad_norm %.3f  %.1f steps/s  ETA %.0fs",
                     step, total, loss, record["grad_norm"], rate, eta)
        t_last, step_last = now, step

    for step in range(start, total):
        batch = jax.make_array_from_process_local_data(run["batch_sharding"], run["batches"](step))
        state, metrics = run["step_fn"](state, batch, jax.random.fold_in(train_root, step))
        if pending is not None:
            report(*pending)
        pending = (step + 1, metrics) if (step + 1) % config.train.log_every == 0 or step + 1 == total else None
        if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == total:
            manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        if config.train.sample_every and (step + 1) % config.train.sample_every == 0:
            _progress_picture(run, config, state, step + 1, workdir)
    if pending is not None:
        report(*pending)
    manager.wait_until_finished()
    writer.close()
    return state


def score_fn_from(model, params, process):
    """s_θ(x, t) = -ε_θ(x, t) / σ(t) (SPEC §4)."""

    def score_fn(x_BxD, t_B):
        eps = model.apply({"params": params}, x_BxD, t_B)
        shape = (-1,) + (1,) * (x_BxD.ndim - 1)
        return -eps / process.sigma(t_B).reshape(shape).astype(eps.dtype)

    return score_fn


def draw_samples(run, config, params, num_samples: int, key, *, law=None, sampler=None):
    """(samples [N, ...], NFE per sample) from ``params`` with the configured sampler.

    ``sampling.sampler`` picks the reverse walk, predictor–corrector or the PF-ODE
    (nnd.samplers), or ``sampler`` if given; ``law`` (default the configured sampling
    law) is the increment law of the walk and corrector. Drawn ``sampling.batch_size`` at a time with one
    compiled sampler; chunk i uses ``fold_in(key, i)``.
    """
    experiment = run["experiment"]
    s = config.sampling
    law = experiment.sampling_law if law is None else law
    sampler = s.sampler if sampler is None else sampler
    score_fn = score_fn_from(run["model"], params, experiment.process)
    batch = min(num_samples, s.batch_size)
    shape = (batch,) + run["batches"].shape
    draw = jax.jit(lambda k: samplers.sample(
        sampler, experiment.process, law, score_fn, k, shape, num_steps=s.num_steps,
        denoise=s.denoise, snr=s.snr, corrector_steps=s.corrector_steps, rtol=s.rtol, atol=s.atol))
    chunks, nfes = [], []
    for i in range(-(-num_samples // batch)):
        x, nfe = draw(jax.random.fold_in(key, i))
        chunks.append(np.asarray(x))
        nfes.append(int(nfe))
    return np.concatenate(chunks)[:num_samples], float(np.mean(nfes))


def picture_title(config, experiment, law=None, nfe=None) -> str:
    law = experiment.sampling_law if law is None else law
    title = (f"{config.data.name}: q={experiment.q}, p={experiment.p}; "
             f"{config.sampling.sampler} sampler, law {law}")
    return title + (f", NFE {nfe:.0f}" if nfe is not None else "")


def save_picture(samples, path: str, title: str):
    """A scatter plot (2-D data) or an image grid of ``samples``."""
    (pictures.scatter_png if np.asarray(samples).ndim == 2 else pictures.grid_png)(samples, path, title)


