"""Training: state, the jitted train step, and the loop.

The train step is one module-level pure function ``(state, batch, key) ->
(state, metrics)``, jitted once with shardings over a ``('data',)`` mesh of all
devices (batch split along it, state replicated) and the state donated. Its
loss is :func:`nnd.losses.objective` for the configured (q, p, K).

:func:`build` returns a typed :class:`Run` (experiment, jitted step, checkpoint
manager, state); :func:`train` is the loop. Checkpoint robustness lives in
:mod:`nnd.checkpoints`, sampling in :mod:`nnd.samplers`, pictures in
:mod:`nnd.pictures`. Keys: the streams of :mod:`nnd.keys`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from nnd import (checkpoints, compile_cache, data, keys, losses, models, paths, pictures, samplers,
                 summaries)
from nnd import config as config_lib
from nnd.progress import Progress

__all__ = ["TrainState", "Run", "NonFiniteError", "make_optimizer", "init_state", "abstract_state",
           "train_step", "JittedStep", "jit_train_step", "make_mesh", "build", "train"]


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient (``train.skip_nonfinite`` off).

    The message names the step, and, once the loop has stopped, the last good
    checkpoint (or that none was saved yet), in one line.
    """


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def make_optimizer(optim: config_lib.Optim):
    """(AdamW with linear warm-up then cosine decay after global-norm clipping, its schedule).

    The schedule runs over ``optim.train_steps`` steps.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, max(optim.warmup_steps, 1),
        max(optim.train_steps, optim.warmup_steps + 1), end_value=0.1 * optim.learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(schedule, weight_decay=optim.weight_decay),
    ), schedule


def init_state(model, tx, key, example_x) -> TrainState:
    params = models.init_params(model, key, example_x)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def abstract_state(model, tx, root, example_x, sharding=None) -> TrainState:
    """Shapes and dtypes of the initial state (``jax.eval_shape``: nothing is computed)."""
    abstract = jax.eval_shape(functools.partial(init_state, model, tx),
                              keys.stream(root, keys.Stream.INIT), example_x)
    if sharding is None:
        return abstract
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        abstract)


def train_step(state: TrainState, batch, key, *, model, tx, experiment, ema_decay: float,
               skip_nonfinite: bool = False):
    """One optimiser step on the eq. (5) objective; returns (state, metrics).

    ``metrics['finite']`` says whether the loss and the gradient norm are finite.
    With ``skip_nonfinite`` a non-finite step leaves parameters, EMA and optimiser
    state unchanged (the step counter still advances, so the batch is skipped).
    """

    key_loss, key_dropout = jax.random.split(key)
    learned_variance = bool(getattr(model, "learned_variance", False))

    def loss_fn(params):
        def eps_fn(x, t):
            return model.apply({"params": params}, x, t, train=True, rngs={"dropout": key_dropout},
                               with_variance=learned_variance)

        loss_B, t_B = losses.objective(
            eps_fn, batch, key_loss, process=experiment.process, q=experiment.q,
            p=experiment.p, num_steps=experiment.num_steps,
            scheme=experiment.sampling.scheme, grid=experiment.sampling.grid,
            learned_variance=learned_variance,
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


class JittedStep(NamedTuple):
    """What :func:`jit_train_step` returns: the step and what it was compiled against."""

    step_fn: Callable
    abstract_state: TrainState
    batch_sharding: NamedSharding
    tx: optax.GradientTransformation
    schedule: Callable[[int], float]


def jit_train_step(experiment: config_lib.Experiment, mesh, example_x) -> JittedStep:
    """The run's train step, jitted: state replicated and donated, batch split along ``('data',)``.

    The one place the step is jitted; used by :func:`build` and by the ahead-of-time
    compile (:mod:`nnd.aot`). It reads only the typed ``experiment``; ``example_x`` only
    gives the data shape (any batch size).
    """
    optim = experiment.optim
    tx, schedule = make_optimizer(optim)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    abstract = abstract_state(experiment.model, tx, jax.random.key(experiment.seed), example_x,
                              replicated)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    step_fn = jax.jit(
        functools.partial(train_step, model=experiment.model, tx=tx, experiment=experiment,
                          ema_decay=optim.ema_decay, skip_nonfinite=optim.skip_nonfinite),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    return JittedStep(step_fn, abstract, batch_sharding, tx, schedule)


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything the loop needs, built once by :func:`build`."""

    experiment: config_lib.Experiment
    schedule: Callable[[int], float]
    mesh: jax.sharding.Mesh
    batch_sharding: NamedSharding
    step_fn: Callable
    manager: ocp.CheckpointManager
    state: TrainState
    root: jax.Array
    batches: Callable[[int], np.ndarray]
    example_shape: tuple[int, ...]


def build(config, workdir: str, *, batches, mesh) -> Run:
    """The experiment, optimiser, jitted step and state of a run, from ``config``.

    Args:
      config: the run's ConfigDict (validated here by :func:`nnd.config.resolve`).
      workdir: where checkpoints live; the newest readable one is restored
        (unreadable newer ones are set aside with a warning), else the state is
        initialised.
      batches: ``batches(step) -> host-local batch`` with ``local_batch`` and
        ``shape`` attributes (e.g. :func:`nnd.data.make_batches`).
      mesh: a ``('data',)`` mesh (e.g. :func:`make_mesh`).
    """
    experiment = config_lib.resolve(config, num_devices=mesh.size)
    root = jax.random.key(experiment.seed)
    example = jnp.zeros((batches.local_batch,) + tuple(batches.shape), jnp.float32)
    jitted = jit_train_step(experiment, mesh, example)
    state_sharding = jax.tree.map(lambda a: a.sharding, jitted.abstract_state)
    keep = config.train.keep_checkpoints
    manager = checkpoints.manager(workdir, keep)
    state, bad = checkpoints.restore_latest(manager, jitted.abstract_state)
    if bad:
        manager = checkpoints.set_aside(manager, bad, workdir, keep)
    if state is None:
        state = jax.jit(functools.partial(init_state, experiment.model, jitted.tx),
                        out_shardings=state_sharding)(keys.stream(root, keys.Stream.INIT), example)
    return Run(experiment=experiment, schedule=jitted.schedule, mesh=mesh,
               batch_sharding=jitted.batch_sharding,
               step_fn=compile_cache.first_call_logged("train step", jitted.step_fn),
               manager=manager, state=state, root=root, batches=batches,
               example_shape=tuple(batches.shape))


def _progress_picture(run: Run, config, params, step: int, workdir: str, writer):
    """Samples from the current EMA parameters: ``workdir/samples/step_<N>.png`` and TensorBoard."""
    e = run.experiment
    n = 1000 if len(run.example_shape) == 1 else 64
    key = keys.stream(run.root, keys.Stream.SAMPLE, step)
    samples, nfe = samplers.draw(e.model, params, e.process, e.sampling_law, e.sampling,
                                 run.example_shape, n, key)
    if not writer.enabled:  # every process samples (the devices are shared), process 0 writes
        return
    path = paths.get(workdir) / "samples" / f"step_{step}.png"
    title = pictures.samples_title(config.data.name, e.q, e.p, e.sampling.sampler, e.sampling_law, nfe)
    writer.images(step, {"samples": pictures.samples_png(samples, path, f"{title}, step {step}")})
    logging.info("step %d: sample picture %s", step, path)


class _LateMetrics:
    """The one metrics path: step s's metrics are fetched after step s + 1 is dispatched.

    :meth:`push` hands over the device metrics of a step and processes the previous
    ones: if they are not finite it raises NonFiniteError naming the step (or,
    with ``skip_nonfinite``, counts and logs the skipped update); on a log step it
    writes them (metrics.jsonl, TensorBoard, one log line with the rate and ETA).
    On a terminal a live bar (:class:`nnd.progress.Progress`) follows every step;
    :meth:`close` ends it. :meth:`flush` processes what is pending (before a checkpoint
    and at the end), so no checkpoint is ever written after a non-finite step.
    """

    def __init__(self, run: Run, config, writer, start: int):
        self.run, self.writer = run, writer
        self.total, self.log_every = config.train.num_steps, config.train.log_every
        self.batch_size, self.skip_nonfinite = config.data.batch_size, config.train.skip_nonfinite
        self.pending = None
        self.skipped = 0
        self.last_loss = None
        self.t_last, self.step_last = None, start
        self.bar = Progress("training", self.total, unit="step", lines=False, initial=start)

    def close(self) -> None:
        self.bar.close()

    def push(self, step: int, metrics) -> None:
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        host = jax.tree.map(np.asarray, metrics)
        if not bool(host["finite"]):
            self._nonfinite(step, float(host["loss"]), float(host["grad_norm"]))
        self.bar.update(step - self.bar.n)
        if step % self.log_every == 0 or step == self.total:
            self._log(step, host)

    def _nonfinite(self, step, loss, grad_norm):
        what = "loss" if not np.isfinite(loss) else "gradients"
        if self.skip_nonfinite:
            self.skipped += 1
            logging.warning("step %d: non-finite %s (loss=%s, grad_norm=%s); update skipped "
                            "(%d so far)", step, what, loss, grad_norm, self.skipped)
            return
        raise NonFiniteError(f"step {step}: non-finite {what} (loss={loss}, grad_norm={grad_norm})")

    def _log(self, step, host):
        now = time.time()
        if self.t_last is None:  # the first interval includes compilation: no rate yet
            rate = eta = None
        else:
            rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
            eta = (self.total - step) / max(rate, 1e-9)
        self.t_last, self.step_last = now, step
        self.last_loss = float(host["loss"])
        record = {"loss": self.last_loss, "grad_norm": float(host["grad_norm"]),
                  "lr": float(self.run.schedule(step)),
                  "loss_by_quartile": [float(v) for v in host["loss_by_quartile"]],
                  "skipped_steps": self.skipped}
        if rate is not None:
            record.update(steps_per_s=rate, examples_per_s=rate * self.batch_size)
        self.writer.write(step, record)
        self.bar.set(loss=f"{self.last_loss:.4f}")
        speed = f"  {rate:.1f} steps/s  ETA {eta:.0f}s" if rate is not None else "  (compiling)"
        logging.info("step %d/%d  loss %.4f  grad_norm %.3f%s", step, self.total, record["loss"],
                     record["grad_norm"], speed)


def train(config, workdir: str, *, batches=None, mesh=None) -> TrainState:
    """Trains from scratch or resumes from ``workdir/checkpoints``; returns the final state.

    ``batches`` defaults to :func:`nnd.data.make_batches` of the config's dataset,
    ``mesh`` to all devices. Robustness: the config is validated before anything is
    created, the workdir checked before anything compiles; SIGTERM saves a checkpoint
    at the current step and returns (rerun to resume, bit-identically); a non-finite
    loss or gradient raises :class:`NonFiniteError` (a FloatingPointError) naming the
    step and the last good checkpoint (no checkpoint is written after it) unless
    ``train.skip_nonfinite``, which skips such steps and counts them. On a resume from
    step s, records of steps after s (``metrics.jsonl``, TensorBoard) are dropped
    first: they describe steps that are about to be trained again. A disk that fills
    mid-run raises :class:`nnd.checkpoints.WorkdirError` naming the workdir and
    the last good checkpoint. ``workdir`` may be local or remote (gs://). Ctrl-C or
    SIGTERM in the loop checkpoints and returns (:class:`nnd.checkpoints.Preemption`);
    before the loop, or a second Ctrl-C, ends the command with one line naming the last
    good checkpoint and exit status 130 or 143 (:func:`nnd.paths.interruptible`).
    """
    with paths.interruptible("training", lambda: f"{_last_good(workdir)}; rerun the same "
                             "command to resume", sigterm=jax.process_count() == 1):
        return _train(config, workdir, batches=batches, mesh=mesh)


def _train(config, workdir: str, *, batches, mesh) -> TrainState:
    started = time.time()
    mesh = make_mesh() if mesh is None else mesh
    config_lib.resolve(config, num_devices=mesh.size)  # an invalid config creates nothing
    checkpoints.check_workdir(workdir)
    batches = data.make_batches(config) if batches is None else batches
    run = build(config, workdir, batches=batches, mesh=mesh)
    state, manager = run.state, run.manager
    checkpoints.check_workdir(workdir, state, config.train.keep_checkpoints)
    start, total = int(state.step), config.train.num_steps
    if start:
        logging.info("resumed from step %d in %s", start, workdir)
    writing = jax.process_index() == 0
    if writing:  # the records end where the restored state does: no step appears twice
        summaries.drop_after(workdir, start)
    train_root = keys.stream(run.root, keys.Stream.TRAIN)
    writer = summaries.SummaryWriter(workdir, enabled=writing)
    late = _LateMetrics(run, config, writer, start)
    preemption = checkpoints.Preemption()
    try:
        for step in range(start, total):
            batch = jax.make_array_from_process_local_data(run.batch_sharding, run.batches(step))
            state, metrics = run.step_fn(state, batch, jax.random.fold_in(train_root, step))
            late.push(step + 1, metrics)
            last = step + 1 == total
            preempted = preemption.reached(step + 1)
            if (step + 1) % config.train.checkpoint_every == 0 or last or preempted:
                late.flush()  # never checkpoint a non-finite state
                checkpoints.save(manager, step + 1, state, force=preempted)
            if preempted:
                manager.wait_until_finished()
                what = "interrupted (Ctrl-C)" if preemption.requested == "SIGINT" else "preempted"
                logging.warning("%s: checkpoint of step %d saved in %s; rerun the same command "
                                "to resume", what, step + 1, manager.directory)
                break
            if config.train.sample_every and (step + 1) % config.train.sample_every == 0:
                _progress_picture(run, config, state.ema_params, step + 1, workdir, writer)
        late.flush()
        manager.wait_until_finished()
    except BaseException as err:
        _close_after_failure(manager)
        if checkpoints.is_disk_full(err):
            raise _disk_full(err, workdir) from None
        if isinstance(err, NonFiniteError):
            raise NonFiniteError(f"{err}; {_last_good(workdir)}. Set "
                                 "config.train.skip_nonfinite=True to skip such steps instead.") from None
        raise
    finally:
        late.close()
        preemption.close()
    manager.close()
    loss = f"{late.last_loss:.4f}" if late.last_loss is not None else "not logged"
    logging.info("done: step %d of %d in %.0f s (this run: %d steps), last logged loss %s; "
                 "checkpoints in %s, metrics in %s", int(state.step), total,
                 time.time() - started, int(state.step) - start, loss, manager.directory,
                 writer.jsonl_path)
    return state


def _close_after_failure(manager: ocp.CheckpointManager) -> None:
    """Closes the manager after the loop failed: a save in flight finishes or fails quietly."""
    try:
        manager.close()
    except Exception as err:  # noqa: BLE001  (the loop's own error is the one to report)
        logging.debug("closing the checkpoint manager after a failure: %s", err)


def _last_good(workdir: str) -> str:
    """"the last good checkpoint is step N in DIR", read from disk after the manager closed."""
    step = checkpoints.latest_step(workdir)
    return (f"the last good checkpoint is step {step} in {checkpoints.directory(workdir)}"
            if step is not None else f"no checkpoint was saved yet in {checkpoints.directory(workdir)}")


def _disk_full(err: BaseException, workdir: str) -> checkpoints.WorkdirError:
    """The one-line error of a disk that filled mid-run: the workdir and the last good checkpoint."""
    return checkpoints.WorkdirError(f"workdir {workdir!r}: no space left on the disk; "
                                    f"{_last_good(workdir)}. Free some space and rerun the same "
                                    "command to resume.")
