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
import shutil
import signal
import threading
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
    "check_workdir",
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


def train_step(state: TrainState, batch, key, *, model, tx, experiment, ema_decay: float,
               skip_nonfinite: bool = False):
    """One optimiser step on the eq. (5) objective; returns (state, metrics).

    ``metrics['finite']`` says whether the loss and the gradient norm are finite.
    With ``skip_nonfinite`` a non-finite step leaves parameters, EMA and optimiser
    state unchanged (the step counter still advances, so the batch is skipped).
    """

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
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with warm-up (decay (1 + n)/(10 + n) until it reaches ema_decay), so early
    # samples are not dragged towards the initial parameters.
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        params, ema = keep(params, state.params), keep(ema, state.ema_params)
        opt_state = keep(opt_state, state.opt_state)
    quartile_B = jnp.clip((t_B * 4).astype(jnp.int32), 0, 3)
    by_quartile = jnp.stack([
        jnp.sum(jnp.where(quartile_B == i, loss_B, 0.0)) / jnp.maximum(jnp.sum(quartile_B == i), 1)
        for i in range(4)
    ])
    metrics = {"loss": loss, "grad_norm": grad_norm, "loss_by_quartile": by_quartile,
               "finite": finite}
    return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics


def make_mesh(devices=None):
    """A 1-D ('data',) mesh over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                 options=options)


def _is_local(path: str) -> bool:
    return "://" not in path


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState):
    """(state, bad_steps): the newest checkpoint that restores, in ``abstract_state``'s shardings.

    A checkpoint that fails to restore (truncated, corrupted) is reported with a
    warning naming it, and the previous one is tried; ``state`` is None if there
    is no readable checkpoint.
    """
    bad = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))
            state = restored["state"]
            if int(state.step) != step:
                raise ValueError(f"holds step {int(state.step)}")
        except Exception as err:  # noqa: BLE001  (any failure to read means: unusable)
            logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                            manager.directory, step, type(err).__name__, str(err)[:200])
            bad.append(step)
            continue
        if bad:
            logging.warning("restored step %d instead of the unreadable step(s) %s", step, bad)
        return state, bad
    return None, bad


def _set_aside(manager, steps, workdir: str, config):
    """Moves unreadable checkpoints to ``checkpoints/<step>.unreadable.<time>`` (deleted if remote)."""
    if jax.process_index() == 0:
        for step in steps:
            path = os.path.join(str(manager.directory), str(step))
            if _is_local(path):
                target = f"{path}.unreadable.{int(time.time())}"
                os.replace(path, target)
                logging.warning("moved unreadable checkpoint %s to %s", path, target)
            else:
                manager.delete(step)
                logging.warning("deleted unreadable checkpoint %s", path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("nnd: unreadable checkpoints set aside")
    manager.close()
    return _checkpoint_manager(workdir, config)


def build(config, workdir: str, mesh=None):
    """Everything a run needs: experiment, model, optimiser, mesh, jitted step, state.

    The state is restored from the newest readable checkpoint in
    ``workdir/checkpoints`` (unreadable newer ones are set aside with a warning),
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
                          ema_decay=config.optim.ema_decay,
                          skip_nonfinite=config.train.skip_nonfinite),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    manager = _checkpoint_manager(workdir, config)
    state, bad = restore_latest(manager, abstract)
    if bad:
        manager = _set_aside(manager, bad, workdir, config)
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


class _Preemption:
    """SIGTERM (a preemption notice) sets a flag the loop checks after every step.

    With several processes the Python handler is not installed: JAX's preemption
    sync point (its own SIGTERM notifier) makes every host stop at the same step.
    If that service is missing, the per-process handler is the fallback (logged:
    hosts may then stop at different steps). The previous handler is restored on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._sync = jax.process_count() > 1
        if not self._sync:
            self._install()

    def _install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing after the current step, then exiting")
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._sync:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError as err:  # no preemption service in this jax.distributed set-up
                logging.warning("no preemption sync point (%s): SIGTERM is handled per process, "
                                "so hosts may stop at different steps", err)
                self._sync = False
                self._install()
        return self.requested

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_workdir(workdir: str, state=None, keep: int = 1):
    """Raises a clear error, before training, if ``workdir`` cannot hold the run.

    Checks (local paths only) that the directory can be created and written, and
    that the free space holds ``keep + 1`` checkpoints of ``state`` (parameters,
    EMA and optimiser state) with a 10% margin.
    """
    if not _is_local(workdir):
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".nnd_write_probe_{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
        os.remove(probe)
    except OSError as err:
        raise OSError(f"workdir {workdir!r} is not writable: {err}") from None
    if state is not None:
        need = int(1.1 * (keep + 1) * sum(x.nbytes for x in jax.tree.leaves(state)))
        free = shutil.disk_usage(workdir).free
        if free < need:
            raise OSError(f"workdir {workdir!r}: {free / 2**20:.1f} MiB free, but {keep + 1} "
                          f"checkpoints need about {need / 2**20:.1f} MiB")


def train_and_evaluate(config, workdir: str, mesh=None) -> TrainState:
    """Trains from scratch or resumes from ``workdir/checkpoints``; returns the final state.

    Robustness: the workdir is checked before anything compiles; SIGTERM saves a
    checkpoint at the current step and returns (rerun to resume, bit-identically);
    a non-finite loss or gradient raises FloatingPointError naming the step (no
    checkpoint is written after it) unless ``train.skip_nonfinite``, which skips
    such steps and counts them.
    """
    check_workdir(workdir)
    run = build(config, workdir, mesh)
    state, manager = run["state"], run["manager"]
    check_workdir(workdir, state, config.train.keep_checkpoints)
    start = int(state.step)
    total = config.train.num_steps
    if start:
        logging.info("resumed from step %d in %s", start, workdir)
    train_root = jax.random.fold_in(run["root"], TRAIN_STREAM)
    writer = summaries.SummaryWriter(workdir, enabled=jax.process_index() == 0)
    pending = None  # metrics of the previous step, fetched one step late
    previous = None  # (step, metrics) whose finiteness is checked one step late
    skipped = 0
    t_last, step_last = time.time(), start

    def check_finite(step, metrics):
        nonlocal skipped
        if bool(metrics["finite"]):
            return
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        what = "loss" if not np.isfinite(loss) else "gradients"
        if config.train.skip_nonfinite:
            skipped += 1
            logging.warning("step %d: non-finite %s (loss=%s, grad_norm=%s); update skipped "
                            "(%d so far)", step, what, loss, grad_norm, skipped)
            return
        raise FloatingPointError(
            f"step {step}: non-finite {what} (loss={loss}, grad_norm={grad_norm}); the last "
            f"good checkpoint is step {manager.latest_step()} in {manager.directory}. Set "
            "config.train.skip_nonfinite=True to skip such steps instead.")

    def report(step, metrics):
        nonlocal t_last, step_last
        host = jax.tree.map(np.asarray, metrics)
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        eta = (total - step) / max(rate, 1e-9)
        record = {"loss": float(host["loss"]), "grad_norm": float(host["grad_norm"]),
                  "lr": float(run["schedule"](step)),
                  "loss_by_quartile": [float(v) for v in host["loss_by_quartile"]],
                  "steps_per_s": rate, "examples_per_s": rate * config.data.batch_size,
                  "skipped_steps": skipped}
        writer.write(step, record)
        logging.info("step %d/%d  loss %.4f  grad_norm %.3f  %.1f steps/s  ETA %.0fs",
                     step, total, record["loss"], record["grad_norm"], rate, eta)
        t_last, step_last = now, step

    preemption = _Preemption()
    try:
        for step in range(start, total):
            batch = jax.make_array_from_process_local_data(run["batch_sharding"],
                                                           run["batches"](step))
            state, metrics = run["step_fn"](state, batch, jax.random.fold_in(train_root, step))
            if previous is not None:
                check_finite(*previous)
            previous = (step + 1, metrics)
            if pending is not None:
                report(*pending)
            last = step + 1 == total
            pending = (step + 1, metrics) if (step + 1) % config.train.log_every == 0 or last else None
            preempted = preemption.reached(step + 1)
            if (step + 1) % config.train.checkpoint_every == 0 or last or preempted:
                check_finite(*previous)  # never checkpoint a non-finite state
                previous = None
                manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                             force=preempted)
            if preempted:
                manager.wait_until_finished()
                logging.warning("preempted: checkpoint of step %d saved in %s; rerun the same "
                                "command to resume", step + 1, manager.directory)
                break
            if config.train.sample_every and (step + 1) % config.train.sample_every == 0:
                _progress_picture(run, config, state, step + 1, workdir)
        if previous is not None:
            check_finite(*previous)
        if pending is not None:
            report(*pending)
    finally:
        preemption.close()
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


