"""The one boundary where a ConfigDict becomes typed, validated values.

:func:`resolve` checks every field that would otherwise fail late (unknown law,
process or dataset, an infinite (q, p) pair, df ≤ 2, num_steps < 1, a batch not
divisible by the device count) and raises a ValueError naming the field, before
anything compiles. Math code never sees a ConfigDict.
"""

from __future__ import annotations

import dataclasses

from nnd import data, increments, losses, processes

__all__ = ["Experiment", "resolve", "DATASETS", "MODELS"]

#: Dataset names the data module knows.
DATASETS = data.DATASETS
#: Model names the models module knows.
MODELS = ("mlp", "vdm", "unet")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What the math needs from a config: process, laws and the step count K."""

    process: processes.Process
    q: increments.Law
    p: increments.Law
    sampling_law: increments.Law
    num_steps: int


def _field_error(field: str, err: Exception) -> ValueError:
    return ValueError(f"config.{field}: {err}")


def _law(section, name_field: str, params_field: str) -> increments.Law:
    name = section[name_field]
    params = dict(section.get(params_field, {}) or {})
    try:
        return increments.get(name, **params)
    except ValueError as err:
        raise _field_error(f"loss.{name_field}", err) from None


def resolve(config, num_devices: int = 1) -> Experiment:
    """Validates ``config`` and returns the typed :class:`Experiment`.

    Raises:
      ValueError: naming the offending field.
    """
    try:
        process = processes.get(config.process.name, **dict(config.process.params))
    except ValueError as err:
        raise _field_error("process", err) from None
    q = _law(config.loss, "q", "q_params")
    p = _law(config.loss, "p", "p_params")
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
            sampling_law = increments.get(law)
        except ValueError as err:
            raise _field_error("sampling.law", f"{err}; or 'q' / 'model'") from None
    try:
        processes.check_num_steps(config.sampling.num_steps)
    except ValueError as err:
        raise _field_error("sampling.num_steps", err) from None

    if config.data.name not in DATASETS:
        raise ValueError(
            f"config.data.name: unknown dataset {config.data.name!r}; choose one of {DATASETS}"
        )
    batch = config.data.batch_size
    if not isinstance(batch, int) or batch < 1 or batch % num_devices:
        raise ValueError(
            f"config.data.batch_size: must be a positive multiple of the device count "
            f"({num_devices}), got {batch!r}"
        )
    if config.model.name not in MODELS:
        raise ValueError(f"config.model.name: unknown model {config.model.name!r}; choose one of {MODELS}")
    is_toy = config.data.name in data.TOYS
    if is_toy != (config.model.name == "mlp"):
        raise ValueError(
            f"config.model.name: {config.model.name!r} does not fit dataset {config.data.name!r}; "
            "use 'mlp' for the 2-D toys and 'vdm' or 'unet' for images")
    for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        value = config.train[field]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.train.{field}: must be a positive integer, got {value!r}")
    if not isinstance(config.train.sample_every, int) or config.train.sample_every < 0:
        raise ValueError(f"config.train.sample_every: must be an integer >= 0, got "
                         f"{config.train.sample_every!r}")
    if not isinstance(config.eval.num_batches, int) or config.eval.num_batches < 1:
        raise ValueError(f"config.eval.num_batches: must be a positive integer, got "
                         f"{config.eval.num_batches!r}")
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ValueError(f"config.optim.ema_decay: must be in [0, 1), got {config.optim.ema_decay}")
    return Experiment(process, q, p, sampling_law, num_steps)
