"""Default configuration: the 2-D `gmm8` toy with Laplace/Laplace steps on a VP process.

Launch (2 CPU cores, about 2 minutes to train):
    python -m nnd.main --config=configs/default.py --workdir=runs/default

Every other config starts from this one and overrides a few fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # root PRNG seed; every other key is folded from it

    config.data = ml_collections.ConfigDict()
    config.data.name = "gmm8"  # gmm8 | checkerboard | moons | swissroll | digits | mnist | cifar10
    config.data.batch_size = 512  # global batch, divisible by the device count

    config.process = ml_collections.ConfigDict()
    config.process.name = "vp"  # vp | subvp | ve | vdm
    config.process.params = ml_collections.ConfigDict()  # e.g. beta_max=20.0; defaults if empty

    config.loss = ml_collections.ConfigDict()
    config.loss.q = "laplace"  # law of the true reverse increment (the diffusion step law)
    config.loss.p = "laplace"  # law of the model's reverse increment
    config.loss.q_params = ml_collections.ConfigDict()  # df for student_t, beta for gennorm
    config.loss.p_params = ml_collections.ConfigDict()
    config.loss.num_steps = 100  # K: walk steps of eq. (5); the same grid samples

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"  # mlp (2-D data) | vdm (VDM's U-Net without downsampling) | unet (DDPM++-style)
    config.model.hidden = 256  # mlp: hidden width
    config.model.depth = 3  # mlp: residual blocks
    config.model.embed_dim = 64  # time-embedding size
    config.model.channels = 128  # vdm, unet: base width
    config.model.num_blocks = 32  # vdm: residual blocks on the way down (and +1 up)
    config.model.channel_mult = (1, 2, 2, 2)  # unet: width multiplier per resolution level
    config.model.num_res_blocks = 2  # unet: residual blocks per level
    config.model.attn_resolutions = (16,)  # unet: resolutions with self-attention
    config.model.dropout = 0.1  # vdm, unet: dropout in residual blocks

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
    config.sampling.law = "q"  # q (default) | model (= p) | any law name: walk and corrector noise
    config.sampling.num_samples = 2000  # samples written by --mode=sample
    config.sampling.num_steps = 300  # walk / pc / heun steps when sampling
    config.sampling.denoise = True  # final Tweedie step
    config.sampling.batch_size = 2000  # samples per compiled sampler call
    config.sampling.snr = 0.16  # pc: Langevin signal-to-noise ratio
    config.sampling.corrector_steps = 1  # pc: corrector steps per step
    config.sampling.rtol = 1e-3  # ode: adaptive solver tolerances for sampling
    config.sampling.atol = 1e-3
    return config
