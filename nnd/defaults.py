"""Default configurations, built in the package so that scripts, tests and the files in
the top-level ``configs/`` share them wherever they run.

- :func:`default`: the 2-D toy (`gmm8`, Laplace/Laplace, VP, MLP).
- :func:`cifar10`, :func:`mnist`, :func:`digits`: the image runs of the paper's Table 2 for
  a row of :data:`ROWS`, each one flat page of what differs from :func:`default`;
  :func:`image` picks one by dataset name.
- :func:`model`: a model section holding exactly what that model takes
  (``models.MODELS[name](**fields)``).

Every field can be set from the command line, e.g. ``--config.loss.q=student_t:5``
or ``--config.process.params.beta_max=10``.
"""

from __future__ import annotations

import ml_collections

from nnd import processes, walks

__all__ = ["ROWS", "EXTRA_ROWS", "MODEL_DEFAULTS", "default", "model", "image", "cifar10", "mnist",
           "digits"]

#: The paper's Table 2 rows: name -> (q, p). With p = gaussian the loss equals the
#: gaussian/gaussian loss up to the constant ℓ(0) (same gradients), so uniform/gaussian
#: trains exactly like gaussian/gaussian and differs only in sampling with uniform steps.
ROWS = {
    "gaussian": ("gaussian", "gaussian"),
    "laplace": ("laplace", "laplace"),
    "uniform": ("uniform", "gaussian"),
    "uniform_laplace": ("uniform", "laplace"),
}

#: Rows the paper does not have, accepted by :func:`image` beside :data:`ROWS` (the digits
#: Table 2 of nnd.experiments.table2 runs them; no file in configs/ names them).
EXTRA_ROWS = {
    "student_t": ("student_t:5", "student_t:5"),  # heavy tails with full support (df = 5)
}

#: What each model takes (nnd.models.MODELS), with its defaults.
MODEL_DEFAULTS = {
    # 2-D data: residual MLP of `depth` blocks of width `hidden`
    "mlp": dict(hidden=256, depth=3, embed_dim=64, learned_variance=False),
    # VDM's score network: `num_blocks` residual blocks of width `channels`, no downsampling
    # (`remat` recomputes block activations in the backward pass; `scan` runs the identical
    # blocks as two flax.linen.scan with tap-wise kernel gradients: the cifar step compiles
    # 4.3x faster on CPU and 2.9x for v4, steps 1.17x slower on CPU; another parameter tree)
    "vdm": dict(channels=128, num_blocks=32, embed_dim=128, dropout=0.1, remat=False, dtype="float32",
                scan=False, query_chunk=0, learned_variance=False),
    # DDPM++-style U-Net: width `channels` x `channel_mult` per level, attention at `attn_resolutions`
    "unet": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                 embed_dim=128, dropout=0.1, remat=False, dtype="float32", query_chunk=0,
                 learned_variance=False),
}
# every model: `learned_variance` adds a head predicting Var[x_0 | x_t] per point, trained by
# the law's own step KL for a learned scale (docs/math.md §5); the 'analytic' scheme and
# sampling.variance_weight > 0 sample with it. Off: the parameters of earlier checkpoints.
# vdm and unet: `query_chunk` > 0 runs attention in chunks of that many queries (same
# result; faster on CPU, where the [B, N, N] weights otherwise go through memory); -1 all
# queries at once; 0 (default) chooses by the platform: chunks of 128 on the CPU from
# N = 512 positions, all at once on TPU/GPU (nnd.models.auto_query_chunk).
# vdm and unet: `dtype` is the compute dtype, float32 | bfloat16 (parameters and optimiser
# state stay float32; likelihood and the walk bound run at float32 'highest' precision).
# The MLP takes `dtype` too (set `config.model.dtype` in code: the toys keep their fields).


def model(name: str, **overrides) -> ml_collections.ConfigDict:
    """The ``model`` section for ``name`` (mlp | vdm | unet): its own fields only."""
    if name not in MODEL_DEFAULTS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_DEFAULTS)}")
    unknown = sorted(set(overrides) - set(MODEL_DEFAULTS[name]))
    if unknown:
        raise ValueError(f"model {name!r} takes no {unknown}; it takes {sorted(MODEL_DEFAULTS[name])}")
    return ml_collections.ConfigDict(dict(name=name, **{**MODEL_DEFAULTS[name], **overrides}))


def default() -> ml_collections.ConfigDict:
    """The toy default: `gmm8`, Laplace/Laplace steps, VP process, the MLP (about 2 min on 2 CPU cores)."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # root PRNG seed; every other key is folded from it
    # Persistent compilation cache (a restart loads its programs): "workdir" keeps it in
    # WORKDIR/compile_cache (local or gs://), "" turns it off, any other path is used as is.
    config.compile_cache = "workdir"

    config.data = ml_collections.ConfigDict()
    config.data.name = "gmm8"  # gmm8 | checkerboard | moons | swissroll | digits | mnist | cifar10
    config.data.batch_size = 512  # global batch, divisible by the device count

    config.process = ml_collections.ConfigDict()
    config.process.name = "vp"  # vp | subvp | ve | vdm
    # Every process parameter (beta_min, beta_max: vp, subvp; sigma_min, sigma_max: ve;
    # gamma_min, gamma_max: vdm; t_eps: all); None keeps the chosen process's default.
    config.process.params = ml_collections.ConfigDict(
        {name: ml_collections.FieldReference(None, field_type=float)
         for name in processes.param_names()})

    config.loss = ml_collections.ConfigDict()
    # Law specs: gaussian | laplace | uniform | logistic | student_t:DF | gennorm:BETA.
    config.loss.q = "laplace"  # law of the true reverse increment (the diffusion step law)
    config.loss.p = "laplace"  # law of the model's reverse increment
    config.loss.num_steps = 100  # K: walk steps of eq. (5); the same grid samples

    config.model = model("mlp")

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-3  # peak AdamW learning rate
    config.optim.warmup_steps = 200  # linear warm-up steps
    config.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    config.optim.grad_clip = 1.0  # global-norm clipping
    config.optim.ema_decay = 0.999  # EMA of parameters used for sampling (warm-up: min(decay, (1+n)/(10+n)))

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 8000  # optimiser steps (about 2 minutes for a toy on 2 CPU cores)
    config.train.log_every = 200  # progress line and metrics every N steps
    config.train.checkpoint_every = 1000  # orbax save every N steps
    config.train.keep_checkpoints = 3  # keep the last M checkpoints
    config.train.sample_every = 2000  # sample picture in WORKDIR/samples/ every N steps (0: never)
    config.train.skip_nonfinite = False  # True: skip steps with a non-finite loss/gradient instead of stopping

    config.eval = ml_collections.ConfigDict()
    config.eval.num_examples = 1000  # held-out examples for likelihood and walk sum (0: whole test split; toys: fresh draws)
    config.eval.batch_size = 500  # examples per jitted likelihood solve (the last batch is padded)
    config.eval.likelihood = True  # PF-ODE log-likelihood (bits/dim for images)
    config.eval.divergence = "auto"  # auto (exact for D <= 64) | exact | rademacher | gaussian
    config.eval.solver = "ode"  # ode (adaptive Dormand-Prince) | heun (fixed steps)
    config.eval.rtol = 1e-5  # adaptive solver tolerances
    config.eval.atol = 1e-5
    config.eval.ode_steps = 200  # heun steps
    config.eval.num_repeats = 1  # independent dequantisations (and probes) of the examples
    config.eval.num_samples = 1000  # samples for the energy distance (and FID)
    config.eval.picture_laws = ("gaussian", "laplace", "uniform")  # Figure 1: one seed, these laws
    config.eval.fid_weights = ""  # InceptionV3 FID weights (.npz, see nnd/fid.py); "" skips FID
    config.eval.fid_cache_dir = ""  # dataset reference statistics ("" : ~/.cache/nnd)

    config.sampling = ml_collections.ConfigDict()
    config.sampling.sampler = "walk"  # walk (reverse walk, eq. 8) | pc (predictor-corrector) | ode | heun (PF-ODE, eq. 6)
    config.sampling.scheme = walks.DEFAULT_SCHEME  # walk and pc step: ancestral | analytic | euler (eq. 8)
    config.sampling.grid = processes.DEFAULT_GRID  # walk, pc, heun: lambda (uniform log-SNR) | t (the paper's)
    # variance family's η: 0 DDIM, 1 ancestral, > 1 wider (docs/math.md §3); unset: the
    # measured rule of K (walks.default_eta: 1 below K = 18, 0.9 to 24, 0.8 from 25)
    config.sampling.eta = ml_collections.config_dict.placeholder(float)
    # variance family's w in [0, 1] (ancestral -> moment-matched; > 0 needs model.learned_variance);
    # unset: the scheme's own (0 ancestral, 1 analytic)
    config.sampling.variance_weight = ml_collections.config_dict.placeholder(float)
    config.sampling.law = "q"  # q (default) | model (= p) | any law spec: walk and corrector noise
    config.sampling.num_samples = 2000  # samples written by --mode=sample
    config.sampling.num_steps = 300  # walk / pc / heun steps when sampling
    config.sampling.denoise = True  # final Tweedie step
    config.sampling.batch_size = 2000  # samples per compiled sampler call
    config.sampling.snr = 0.16  # pc: Langevin signal-to-noise ratio
    config.sampling.corrector_steps = 1  # pc: corrector steps per step
    config.sampling.rtol = 1e-3  # ode: adaptive solver tolerances for sampling
    config.sampling.atol = 1e-3
    return config


def _row(row: str) -> tuple[str, str]:
    return {**ROWS, **EXTRA_ROWS}[row]


# The image configs below are flat: each starts from default() and sets every field it
# changes, so one function is the whole difference from the toy default. The first block
# of each is what all image runs share (the paper's vdm schedule for BPD, weight decay,
# the whole test split); the TPU sizes and times of the cifar runs are in docs/tpu.md.


def cifar10(row: str = "gaussian", net: str = "vdm") -> ml_collections.ConfigDict:
    """CIFAR-10 with VDM's score network (32 blocks of width 128, no downsampling) or the U-Net."""
    config = default()
    config.loss.q, config.loss.p = _row(row)
    config.process.name = "vdm"
    config.optim.weight_decay = 0.01
    config.eval.num_examples = 0  # the whole test split
    config.sampling.num_samples = 64

    config.data.name = "cifar10"
    config.data.batch_size = 128
    config.model = model(net)
    config.loss.num_steps = 1000
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.ema_decay = 0.9999
    config.train.num_steps = 1_000_000
    config.train.log_every = 1000
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000
    config.sampling.num_steps = 1000
    config.sampling.batch_size = 500
    # 10000 test images in 100 solves. 500 needs 33.1 GB of temporaries for one PF-ODE
    # solve (a VJP through the network per step): more than a v4 chip's 32 GiB (docs/tpu.md)
    config.eval.batch_size = 100
    config.eval.num_samples = 50_000  # the FID convention
    return config


def mnist(row: str = "gaussian", net: str = "unet") -> ml_collections.ConfigDict:
    """MNIST (28×28) with the DDPM++-style U-Net (or VDM's network)."""
    config = default()
    config.loss.q, config.loss.p = _row(row)
    config.process.name = "vdm"
    config.optim.weight_decay = 0.01
    config.eval.num_examples = 0  # the whole test split
    config.sampling.num_samples = 64

    config.data.name = "mnist"
    config.data.batch_size = 128
    config.model = (model(net, channels=64, channel_mult=(1, 2, 2), attn_resolutions=(7,))
                    if net == "unet" else model(net, channels=64))
    config.loss.num_steps = 1000
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 1000
    config.optim.ema_decay = 0.9995
    config.train.num_steps = 100_000
    config.train.log_every = 500
    config.train.checkpoint_every = 5000
    config.train.sample_every = 10_000
    config.sampling.num_steps = 1000
    config.sampling.batch_size = 500
    config.eval.batch_size = 500
    config.eval.num_samples = 10_000
    return config


def digits(row: str = "gaussian", net: str = "vdm") -> ml_collections.ConfigDict:
    """scikit-learn's 8×8 digits (17 levels; bundled, no download), small VDM network."""
    config = default()
    config.loss.q, config.loss.p = _row(row)
    config.process.name = "vdm"
    config.eval.num_examples = 0  # the whole test split
    config.sampling.num_samples = 64

    config.data.name = "digits"
    config.data.batch_size = 128
    config.model = (model(net, channels=32, num_blocks=4, embed_dim=32, dropout=0.0)
                    if net == "vdm" else model(net, channels=32, embed_dim=32, dropout=0.0))
    config.loss.num_steps = 200
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.optim.ema_decay = 0.999
    config.train.num_steps = 2000
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    config.train.sample_every = 500
    config.sampling.num_steps = 200
    config.eval.batch_size = 180  # the 359 test digits in two solves
    # Exact divergence would cost 64 Jacobian-vector products per evaluation (hours on
    # 2 cores); Hutchinson's estimate is unbiased and its noise is in the standard error.
    config.eval.divergence = "rademacher"
    config.eval.num_samples = 1000
    return config


_IMAGE_BUILDERS = {"cifar10": (cifar10, "vdm"), "mnist": (mnist, "unet"), "digits": (digits, "vdm")}


def image(dataset: str, row: str, *, net: str | None = None) -> ml_collections.ConfigDict:
    """The config of Table 2 row ``row`` (a key of :data:`ROWS` or :data:`EXTRA_ROWS`) on ``dataset``.

    ``net`` picks the network (``vdm`` or ``unet``; default: VDM's for cifar10 and
    digits, the U-Net for mnist).
    """
    if dataset not in _IMAGE_BUILDERS:
        raise ValueError(f"unknown image dataset {dataset!r}; choose one of {sorted(_IMAGE_BUILDERS)}")
    if row not in ROWS and row not in EXTRA_ROWS:
        raise ValueError(f"unknown Table 2 row {row!r}; choose one of {sorted({**ROWS, **EXTRA_ROWS})}")
    build, default_net = _IMAGE_BUILDERS[dataset]
    net = net or default_net
    if net not in ("vdm", "unet"):
        raise ValueError(f"an image model is 'vdm' or 'unet', got {net!r}")
    return build(row, net)
