"""Shared settings of the image configs; each `<dataset>_<row>.py` picks (q, p).

The four rows of the paper's Table 2: gaussian/gaussian, laplace/laplace,
uniform/gaussian and uniform/laplace. With p = gaussian the loss equals the
gaussian/gaussian loss up to the constant l(0) (same gradients), so
uniform/gaussian trains exactly like gaussian/gaussian and differs only in
sampling with uniform steps (`sampling.law` defaults to q).
"""

from configs import default

# Table 2 rows: file suffix -> (q, p).
ROWS = {
    "gaussian": ("gaussian", "gaussian"),
    "laplace": ("laplace", "laplace"),
    "uniform": ("uniform", "gaussian"),
    "uniform_laplace": ("uniform", "laplace"),
}


def _base(q: str, p: str):
    config = default.get_config()
    config.loss.q, config.loss.p = q, p
    config.process.name = "vdm"  # the schedule the paper used for its BPD column
    config.model.embed_dim = 128
    config.model.dropout = 0.1
    config.optim.weight_decay = 0.01
    config.sampling.num_samples = 64
    config.eval.num_examples = 0  # the whole test split
    return config


def cifar(row: str):
    """CIFAR-10 with VDM's score network (32 blocks of width 128, no downsampling)."""
    config = _base(*ROWS[row])
    config.data.name = "cifar10"
    config.data.batch_size = 128
    config.model.name = "vdm"  # or "unet" for the DDPM++-style U-Net
    config.model.channels = 128
    config.model.num_blocks = 32
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
    config.eval.batch_size = 500  # 10000 test images in 20 solves (Hutchinson probes: D = 3072)
    config.eval.num_samples = 50_000  # the FID convention
    return config


def mnist(row: str):
    """MNIST (28×28) with the DDPM++-style U-Net."""
    config = _base(*ROWS[row])
    config.data.name = "mnist"
    config.data.batch_size = 128
    config.model.name = "unet"
    config.model.channels = 64
    config.model.channel_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (7,)
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


def digits(row: str):
    """scikit-learn's 8×8 digits (17 levels; bundled, no download), small VDM network."""
    config = _base(*ROWS[row])
    config.data.name = "digits"
    config.data.batch_size = 128
    config.model.name = "vdm"
    config.model.channels = 32
    config.model.num_blocks = 4
    config.model.embed_dim = 32
    config.model.dropout = 0.0
    config.loss.num_steps = 200
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.optim.weight_decay = 0.0
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
