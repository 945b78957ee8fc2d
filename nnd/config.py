"""The one boundary where a ConfigDict becomes typed, validated values.

:func:`resolve` checks every field that would otherwise fail late (unknown law,
process or dataset, an infinite (q, p) pair, df ≤ 2, num_steps < 1, a batch not
divisible by the device count) and raises a ConfigError (a ValueError) naming the field, before
anything compiles. Math code never sees a ConfigDict.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax

from nnd import data, increments, likelihood, losses, models, paths, processes, samplers, walks

__all__ = ["ConfigError", "Experiment", "Optim", "resolve", "DATASETS", "RUN_FIELDS",
           "check_same_run"]

#: Dataset names the data module knows.
DATASETS = data.DATASETS


@dataclasses.dataclass(frozen=True)
class Optim:
    """The optimiser and the training length: what the train step needs from a config."""

    learning_rate: float
    warmup_steps: int
    grad_clip: float
    weight_decay: float
    ema_decay: float
    train_steps: int
    skip_nonfinite: bool


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What the math needs from a config: process, laws, K, the network, how to sample and
    how to optimise; ``seed`` is the run's root key."""

    process: processes.Process
    q: increments.Law
    p: increments.Law
    sampling_law: increments.Law
    num_steps: int
    model: nn.Module
    sampling: samplers.Settings
    optim: Optim
    seed: int


class ConfigError(ValueError):
    """A config field the run cannot use; the message names the field (``config.<section>.<name>``)."""


def _field_error(field: str, err: Exception) -> ConfigError:
    return ConfigError(f"config.{field}: {err}")


def _law(spec, field: str) -> increments.Law:
    try:
        return increments.parse(spec)
    except ValueError as err:
        raise _field_error(field, err) from None


def _process(section) -> processes.Process:
    params = {k: v for k, v in dict(section.params).items() if v is not None}
    try:
        return processes.get(section.name, **params)
    except ValueError as err:
        raise _field_error("process", err) from None


def _model(section) -> nn.Module:
    fields = dict(section)
    name = fields.pop("name")
    try:
        return models.make(name, **fields)
    except (TypeError, ValueError) as err:
        raise _field_error("model", err) from None


def _positive_int(section, name: str, field: str, minimum: int = 1):
    value = section[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config.{name}.{field}: must be an integer >= {minimum}, got {value!r}")


def _positive_float(section, name: str, field: str):
    value = section[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"config.{name}.{field}: must be a positive number, got {value!r}")


def _check_sampling(s):
    if s.sampler not in samplers.SAMPLERS:
        raise ConfigError(f"config.sampling.sampler: unknown sampler {s.sampler!r}; choose one of "
                          f"{samplers.SAMPLERS}")
    if s.scheme not in walks.SCHEMES:
        raise ConfigError(f"config.sampling.scheme: unknown scheme {s.scheme!r}; choose one of "
                          f"{walks.SCHEMES}")
    if s.grid not in processes.GRIDS:
        raise ConfigError(f"config.sampling.grid: unknown grid {s.grid!r}; choose one of "
                          f"{processes.GRIDS}")
    for field in ("num_samples", "batch_size"):
        _positive_int(s, "sampling", field)
    _positive_int(s, "sampling", "corrector_steps", minimum=0)
    for field in ("snr", "rtol", "atol"):
        _positive_float(s, "sampling", field)
    eta = s.get("eta")
    if eta is not None and (isinstance(eta, bool) or not isinstance(eta, (int, float))
                            or not eta >= 0):
        raise ConfigError(f"config.sampling.eta: must be a number >= 0, got {eta!r}")
    weight = s.get("variance_weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not 0.0 <= weight <= 1.0):
        raise ConfigError(f"config.sampling.variance_weight: must be in [0, 1], got {weight!r}")
    if s.scheme == "euler" and (eta not in (None, 1.0) or weight is not None):
        raise ConfigError("config.sampling.eta / variance_weight: the variance family is for the "
                          "'ancestral' and 'analytic' schemes, not 'euler'")


def _check_learned_variance(sampling, model) -> None:
    learned = bool(getattr(model, "learned_variance", False))
    weight = sampling.get("variance_weight")
    if not learned and walks.uses_x0_variance(sampling.scheme, weight):
        raise ConfigError(
            f"config.sampling.scheme / variance_weight: {sampling.scheme!r} with w = "
            f"{1.0 if weight is None else weight} needs a per-point Var[x_0 | x_t]; set "
            "config.model.learned_variance = True (and train with it)")
    if learned and sampling.scheme == "euler":
        raise ConfigError("config.model.learned_variance: trains the variance of the 'ancestral' "
                          "family; config.sampling.scheme is 'euler'")


def _check_eval(e):
    if e.divergence not in likelihood.DIVERGENCES:
        raise ConfigError(f"config.eval.divergence: must be one of {likelihood.DIVERGENCES}, "
                         f"got {e.divergence!r}")
    if e.solver not in ("ode", "heun"):
        raise ConfigError(f"config.eval.solver: must be 'ode' or 'heun', got {e.solver!r}")
    _positive_int(e, "eval", "num_examples", minimum=0)
    for field in ("batch_size", "ode_steps", "num_repeats", "num_samples"):
        _positive_int(e, "eval", field)
    if e.num_samples < 2:
        raise ConfigError(f"config.eval.num_samples: the energy distance needs >= 2, got {e.num_samples}")
    for field in ("rtol", "atol"):
        _positive_float(e, "eval", field)
    for law in e.picture_laws:
        try:
            increments.parse(law)
        except ValueError as err:
            raise ConfigError(f"config.eval.picture_laws: {err}") from None
    if e.fid_weights and not os.path.isfile(e.fid_weights):
        raise ConfigError(f"config.eval.fid_weights: no such file {e.fid_weights!r} "
                         "(see nnd/inception.py for how to obtain the weights)")
    if e.fid_weights:
        from nnd import inception  # noqa: PLC0415  (only when weights are given)

        try:  # before hours of evaluation, not after
            inception.load_weights(e.fid_weights)
        except (ValueError, OSError) as err:
            raise ConfigError(f"config.eval.fid_weights: {err}") from None


def resolve(config, num_devices: int = 1) -> Experiment:
    """Validates ``config`` and returns the typed :class:`Experiment`.

    Raises:
      ConfigError: a ValueError naming the offending field.
    """
    process = _process(config.process)
    q = _law(config.loss.q, "loss.q")
    p = _law(config.loss.p, "loss.p")
    try:
        losses.check_pair(q, p)
    except ValueError as err:
        raise _field_error("loss (q, p)", err) from None
    try:
        num_steps = processes.check_num_steps(config.loss.num_steps)
    except ValueError as err:
        raise _field_error("loss.num_steps", err) from None

    law = config.sampling.law
    if law == "q":
        sampling_law = q
    elif law in ("model", "p"):
        sampling_law = p
    else:
        try:
            sampling_law = increments.parse(law)
        except ValueError as err:
            raise _field_error("sampling.law", f"{err}; or 'q' / 'model'") from None
    try:
        processes.check_num_steps(config.sampling.num_steps)
    except ValueError as err:
        raise _field_error("sampling.num_steps", err) from None

    if config.data.name not in DATASETS:
        raise ConfigError(
            f"config.data.name: unknown dataset {config.data.name!r}; choose one of {DATASETS}"
        )
    batch = config.data.batch_size
    if not isinstance(batch, int) or batch < 1 or batch % num_devices:
        raise ConfigError(
            f"config.data.batch_size: must be a positive multiple of the device count "
            f"({num_devices}), got {batch!r}"
        )
    model = _model(config.model)
    is_toy = config.data.name in data.TOYS
    if is_toy != (config.model.name == "mlp"):
        raise ConfigError(
            f"config.model.name: {config.model.name!r} does not fit dataset {config.data.name!r}; "
            "use 'mlp' for the 2-D toys and 'vdm' or 'unet' for images")
    for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        value = config.train[field]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.train.{field}: must be a positive integer, got {value!r}")
    if not isinstance(config.train.sample_every, int) or config.train.sample_every < 0:
        raise ConfigError(f"config.train.sample_every: must be an integer >= 0, got "
                         f"{config.train.sample_every!r}")
    _check_sampling(config.sampling)
    _check_learned_variance(config.sampling, model)
    _check_eval(config.eval)
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ConfigError(f"config.optim.ema_decay: must be in [0, 1), got {config.optim.ema_decay}")
    s = config.sampling
    sampling = samplers.Settings(sampler=s.sampler, scheme=s.scheme, grid=s.grid,
                                 num_steps=s.num_steps, denoise=bool(s.denoise),
                                 snr=float(s.snr), corrector_steps=s.corrector_steps,
                                 rtol=float(s.rtol), atol=float(s.atol), batch_size=s.batch_size,
                                 eta=None if s.get("eta") is None else float(s.eta),
                                 variance_weight=(None if s.get("variance_weight") is None
                                                  else float(s.variance_weight)))
    o = config.optim
    optim = Optim(learning_rate=float(o.learning_rate), warmup_steps=int(o.warmup_steps),
                  grad_clip=float(o.grad_clip), weight_decay=float(o.weight_decay),
                  ema_decay=float(o.ema_decay), train_steps=int(config.train.num_steps),
                  skip_nonfinite=bool(config.train.skip_nonfinite))
    return Experiment(process, q, p, sampling_law, num_steps, model, sampling, optim,
                      int(config.seed))


#: The fields a checkpoint depends on: another value of any of them makes the workdir's
#: checkpoints those of another run (other parameter shapes, or another model of the data).
RUN_FIELDS = ("data.name", "model", "process", "loss.q", "loss.p")
RUN_CONFIG = "run_config.json"
#: Fields added after runs were recorded, with the value their absence stands for.
_ADDED_FIELDS = {"model.learned_variance": False}


def _run_fields(config) -> dict:
    flat = {}
    for field in RUN_FIELDS:
        section, _, name = field.partition(".")
        value = config[section][name] if name else config[section]
        if hasattr(value, "to_dict"):
            for key, item in sorted(value.to_dict().items()):
                flat[f"{field}.{key}"] = item
        else:
            flat[field] = value
    return json.loads(json.dumps(flat, default=str))  # tuples as lists, as stored


def check_same_run(workdir: str, config, *, record: bool) -> None:
    """Refuses a workdir whose checkpoints were trained with other :data:`RUN_FIELDS`.

    Training records the fields in ``WORKDIR/run_config.json`` (``record=True``: when the
    workdir has no checkpoint yet, or has checkpoints from before the record existed);
    a later training compares every field against it, and evaluation and sampling
    (``record=False``) the network's (``data.name``, ``model``): they may take the
    checkpoint under another law or process on purpose.

    Raises:
      ConfigError: naming every field that differs, with both values.
    """
    root = paths.get(workdir)
    stored_path, now = root / RUN_CONFIG, _run_fields(config)
    checkpoints = root / "checkpoints"
    has_checkpoint = checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else None
    if stored is not None and has_checkpoint:
        stored = {**_ADDED_FIELDS, **stored}
        network = ("data.name", "model.")
        differ = [f"config.{k} is {stored.get(k)!r} there, {now.get(k)!r} here"
                  for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)
                  and (record or k.startswith(network))]
        if differ:
            raise ConfigError(f"workdir {workdir!r} holds checkpoints of another config: "
                              + "; ".join(differ) + ". Use another --workdir, or the same fields.")
        return
    if record and jax.process_index() == 0:
        paths.write(stored_path, json.dumps(now, indent=1, sort_keys=True) + "\n")
