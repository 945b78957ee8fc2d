"""Training data: 2-D toys and quantised images, as a pure function of the step.

Every batch is a pure function of (seed, step, process index), so the data
position saved with a checkpoint is the step itself and a resumed run sees
exactly the batches an uninterrupted run would have seen.

Images (``cifar10``, ``mnist`` through ``tfds.data_source``, no TensorFlow at
train time; ``digits``, scikit-learn's bundled 8×8 handwritten digits, no
download) go through a grain ``MapDataset``: shuffle (a new permutation each
epoch), this host's shard, uniform dequantisation of the L levels
``z = 2(n + U)/L - 1`` into [-1, 1], a random horizontal flip for CIFAR-10,
then batching. ``dataset[step]`` is the host-local batch of that step.

CIFAR-10 and MNIST are prepared ahead of training, once per data_dir
(``--data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``)::

    python -m nnd.data prepare cifar10 [mnist] [--data_dir=DIR] [--manual_dir=DIR] [--cache=URL]

which runs tfds's own builder (download, then array_record files; this step needs
TensorFlow). Training never downloads: unprepared data raises :class:`DataError`
(one line naming the dataset, the data_dir and the command above), and so does
``prepare`` when the download server cannot be reached (within seconds, not after
tfds's ten retries). ``--manual_dir`` takes the raw files (``cifar-10-binary.tar.gz``;
MNIST's four ``*-ubyte.gz``) from a folder instead of the network; ``--cache`` shares
one preparation between the hosts of a slice (see :func:`prepare`). Ctrl-C or SIGTERM
leaves no half-made dataset (tfds builds in an ``incomplete.*`` folder and renames it;
the next ``prepare`` removes one a SIGKILL left) and prints one line; rerun to prepare.

Toys (2-D, drawn fresh from a key):

- ``gmm8``: 8 Gaussians on the unit circle, std 0.1 (docs/math.md §6; exact score known).
- ``checkerboard``: uniform on the black squares of a 4×4 board on [-2, 2]².
- ``moons``: two interleaved half circles with Gaussian noise 0.05 (scaled to ≈ unit).
- ``swissroll``: a 2-D swiss roll with noise 0.05 (scaled to ≈ unit).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging as py_logging
import os
import shutil
import sys
import time
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

from nnd import keys, oracles, paths

__all__ = ["toy_batch", "TOYS", "IMAGES", "ImageSpec", "image_source", "image_dataset",
           "dequantize", "example_shape", "Batches", "make_batches", "DATASETS", "DataError",
           "tfds_data_dir", "prepare"]


def _gmm8(key, n):
    return oracles.sample_gmm(key, oracles.gmm8(), n)


def _checkerboard(key, n):
    k_cell, k_pos = jax.random.split(key)
    # 8 black cells of a 4x4 board: (i + j) even.
    cells = jnp.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                      jnp.float32)
    idx = jax.random.randint(k_cell, (n,), 0, cells.shape[0])
    u = jax.random.uniform(k_pos, (n, 2))
    return (cells[idx] + u) - 2.0


def _moons(key, n):
    k_side, k_angle, k_noise = jax.random.split(key, 3)
    side = jax.random.bernoulli(k_side, 0.5, (n,))
    angle = jax.random.uniform(k_angle, (n,), maxval=jnp.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
    x = jnp.where(side[:, None], upper, lower)
    x = x + 0.05 * jax.random.normal(k_noise, (n, 2))
    return (x - jnp.array([0.5, 0.25])) / 0.9


def _swissroll(key, n):
    k_t, k_noise = jax.random.split(key)
    t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1) / 7.5
    return x + 0.05 * jax.random.normal(k_noise, (n, 2))


#: Name → sampler(key, n) -> [n, 2] float32.
TOYS = {"gmm8": _gmm8, "checkerboard": _checkerboard, "moons": _moons, "swissroll": _swissroll}


def toy_batch(name: str, seed: int, step: int, batch_size: int):
    """The batch of step ``step``: a pure function of (name, seed, step, batch_size)."""
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOYS)}")
    data_root = keys.stream(jax.random.key(seed), keys.Stream.DATA)
    key = jax.random.fold_in(data_root, step)
    return TOYS[name](key, batch_size)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """A quantised image dataset: tfds name (None if embedded), shape, levels L, flips."""

    tfds_name: str | None
    shape: tuple[int, int, int]
    num_levels: int
    flip: bool


IMAGES = {
    "cifar10": ImageSpec("cifar10", (32, 32, 3), 256, True),
    "mnist": ImageSpec("mnist", (28, 28, 1), 256, False),
    "digits": ImageSpec(None, (8, 8, 1), 17, False),
}

#: Every dataset name a config may use.
DATASETS = tuple(TOYS) + tuple(IMAGES)

_DIGITS_TEST_FRACTION = 0.2


class DigitsSource:
    """scikit-learn's 1797 bundled 8×8 digits (levels 0..16) as a random-access source.

    A fixed permutation (seed 0) puts 80% in ``train`` and 20% in ``test``.
    """

    def __init__(self, split: str):
        from sklearn import datasets  # noqa: PLC0415  (only this dataset needs it)

        if split not in ("train", "test"):
            raise ValueError(f"digits has splits 'train' and 'test', got {split!r}")
        images = datasets.load_digits().images.astype(np.uint8)[..., None]
        order = np.random.default_rng(0).permutation(len(images))
        n_test = int(round(_DIGITS_TEST_FRACTION * len(images)))
        idx = order[n_test:] if split == "train" else order[:n_test]
        self._images = images[np.sort(idx)]

    def __len__(self):
        return len(self._images)

    def __getitem__(self, i):
        return {"image": self._images[i]}


class DataError(FileNotFoundError):
    """Image data that is not prepared, or cannot be: one line naming dataset, folder and fix.

    A FileNotFoundError, so ``nnd.main`` prints it as ``nnd: ...`` without a traceback.
    """


#: The on-disk format nnd reads (random access, no TensorFlow).
_FILE_FORMAT = "array_record"
#: tfds's own default folder.
_DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


def tfds_data_dir(data_dir: str | None = None) -> str:
    """The tfds folder: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or _DEFAULT_DATA_DIR
    return data_dir if "://" in data_dir else os.path.abspath(os.path.expanduser(data_dir))


def _prepare_command(name: str, data_dir: str) -> str:
    """The command that prepares ``name`` into ``data_dir`` (no flag for tfds's default folder)."""
    flag = "" if data_dir == tfds_data_dir(_DEFAULT_DATA_DIR) else f" --data_dir={data_dir}"
    return f"python -m nnd.data prepare {name}{flag}"


@contextlib.contextmanager
def _quiet_variant_warnings():
    """Hides tfds's "Variant folder ... has no dataset_info.json" warning (an unprepared folder)."""
    def drop(record):
        return not str(record.msg).startswith("Variant folder")

    logger = py_logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _check_prepared(tfds, name: str, data_dir: str):
    """The builder of ``name`` prepared as array_record in ``data_dir``; DataError otherwise."""
    with _quiet_variant_warnings():
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    if not prepared:
        raise DataError(f"{name} is not prepared in {data_dir} (no {name}/{builder.version} "
                        f"there); prepare it first: {_prepare_command(name, data_dir)}")
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != _FILE_FORMAT:
        raise DataError(f"{name} in {data_dir} is prepared as {file_format}, but nnd reads "
                        f"{_FILE_FORMAT}: prepare it into another folder (python -m nnd.data "
                        f"prepare {name} --data_dir=OTHER) and set TFDS_DATA_DIR=OTHER")
    return builder


def _tfds_source(name: str, split: str, data_dir: str | None):
    """tfds.data_source of already prepared data: never downloads (DataError if not prepared)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    data_dir = tfds_data_dir(data_dir)
    try:
        with _quiet_variant_warnings():
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                    builder_kwargs={"file_format": _FILE_FORMAT})
    except Exception:  # tfds says "splits is empty", "format already set", ...
        _check_prepared(tfds, name, data_dir)  # raises DataError naming the fix, if that is it
        raise


def image_source(name: str, split: str, *, data_dir: str | None = None):
    """Random-access source of {'image': uint8 [H, W, C]} records.

    tfds datasets are read from ``data_dir`` (default :func:`tfds_data_dir`) and never
    downloaded here: unprepared data raises :class:`DataError` naming the prepare command.
    """
    if name not in IMAGES:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {sorted(IMAGES)}")
    spec = IMAGES[name]
    if spec.tfds_name is None:
        return DigitsSource(split)
    return _tfds_source(spec.tfds_name, split, data_dir)


def dequantize(n, u, num_levels: int):
    """z = 2(n + u)/L - 1: integer levels n ∈ {0..L-1} plus uniform u ∈ [0, 1) into [-1, 1]."""
    return (2.0 * (np.asarray(n, np.float32) + u) / num_levels - 1.0).astype(np.float32)


def image_dataset(name: str, split: str, *, seed: int, global_batch: int,
                  process_index: int = 0, process_count: int = 1, source=None):
    """grain MapDataset whose item ``step`` is this host's batch [B/processes, H, W, C]."""
    import grain  # noqa: PLC0415

    spec = IMAGES[name]
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    source = image_source(name, split) if source is None else source

    def transform(record, rng):
        image = np.asarray(record["image"]).reshape(spec.shape)
        x = dequantize(image, rng.random(image.shape, dtype=np.float32), spec.num_levels)
        if spec.flip and rng.random() < 0.5:
            x = x[:, ::-1, :]
        return x

    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    # Random transforms before sharding: their draws are keyed by the global
    # position, so hosts get independent dequantisation noise and flips.
    ds = ds.random_map(transform, seed=seed + 1)
    ds = ds[process_index::process_count]
    return ds.batch(global_batch // process_count, drop_remainder=True)


def example_shape(name: str) -> tuple[int, ...]:
    """The shape of one example of dataset ``name`` (no data is read)."""
    if name in TOYS:
        return (2,)
    if name in IMAGES:
        return IMAGES[name].shape
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


class Batches:
    """``batches(step)`` is this host's numpy batch of that step; ``shape`` one example's shape."""

    def __init__(self, name: str, seed: int, global_batch: int, *, split: str = "train",
                 process_index: int | None = None, process_count: int | None = None):
        self.name, self.seed, self.global_batch = name, seed, global_batch
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch % self.process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by "
                             f"{self.process_count} processes")
        self.local_batch = global_batch // self.process_count
        if name in TOYS:
            self.shape, self.num_levels, self._images = (2,), None, None
        elif name in IMAGES:
            spec = IMAGES[name]
            self.shape, self.num_levels = spec.shape, spec.num_levels
            self._images = image_dataset(
                name, split, seed=seed, global_batch=global_batch,
                process_index=self.process_index, process_count=self.process_count)
        else:
            raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")

    def __call__(self, step: int) -> np.ndarray:
        if self._images is not None:
            return np.asarray(self._images[step])
        full = np.asarray(toy_batch(self.name, self.seed, step, self.global_batch))
        lo = self.process_index * self.local_batch
        return full[lo:lo + self.local_batch]


def make_batches(config, split: str = "train") -> Batches:
    return Batches(config.data.name, config.seed, config.data.batch_size, split=split)


# ---------------------------------------------------------------------------------------
# Preparing CIFAR-10 and MNIST ahead of training: python -m nnd.data prepare NAME

#: Seconds ``prepare`` waits for a download server before reporting that it cannot reach it.
PROBE_TIMEOUT_S = 10.0


def _say(message: str) -> None:
    print(f"nnd: {message}", file=sys.stderr, flush=True)


def _raw_files(builder) -> dict[str, str]:
    """URL → file name of the raw files tfds's builder downloads (its registered checksums)."""
    return {url: info.filename or os.path.basename(urllib.parse.urlparse(url).path)
            for url, info in (type(builder).url_infos or {}).items()}


def _probe(name: str, urls, data_dir: str, timeout: float) -> None:
    """One request to each download server; DataError at once if one cannot be reached.

    tfds itself retries a failed connection ten times (minutes) and then prints pages of
    chained tracebacks; this says the same in one line within ``timeout`` seconds.
    """
    import requests  # noqa: PLC0415  (a tfds dependency)

    for host, url in {urllib.parse.urlparse(u).netloc: u for u in urls}.items():
        try:
            requests.head(url, timeout=timeout, allow_redirects=True)
        except requests.exceptions.RequestException as err:
            raise DataError(
                f"cannot download {name}: {host} is unreachable ({type(err).__name__}). Without "
                f"internet, put {', '.join(sorted(urls.values()))} in a folder and add "
                f"--manual_dir=FOLDER, or copy a prepared {name}/ folder into {data_dir}") from None


#: tfds's prefix for a folder in the making (``incomplete.XXXXXX_VERSION``); nnd's copies too.
_INCOMPLETE = "incomplete."


def _remove_incomplete(target: str) -> None:
    """Removes the folders in the making that an interrupted ``prepare`` left next to ``target``.

    tfds builds ``NAME/VERSION`` in ``NAME/incomplete.XXXXXX_VERSION`` and renames it when
    done; Ctrl-C and SIGTERM remove it on the way out, a SIGKILL or a power cut do not.
    """
    parent, version = os.path.split(os.path.normpath(target))
    if not os.path.isdir(parent):
        return
    for entry in os.scandir(parent):
        if entry.is_dir() and entry.name.startswith(_INCOMPLETE) and entry.name.endswith(
                f"_{version}"):
            _say(f"removing {entry.path}, left by an interrupted preparation")
            shutil.rmtree(entry.path, ignore_errors=True)


def _copy_variant(src, dst) -> None:
    """Copies a prepared ``NAME/VERSION`` folder, whole or not at all.

    A local ``dst`` is filled as ``incomplete.nnd<pid>_VERSION`` beside it and renamed
    when complete (removed if interrupted). In a bucket every object is uploaded whole,
    ``dataset_info.json`` last: tfds counts a folder as prepared only once that file is
    there, so a copy cut short is redone by the next ``prepare`` rather than read.
    """
    from etils import epath  # noqa: PLC0415

    src = epath.Path(src)
    files = sorted((f for f in src.iterdir() if not f.is_dir()),
                   key=lambda f: f.name == "dataset_info.json")
    remote = "://" in os.fspath(dst)
    if remote:
        staging = epath.Path(dst)
    else:
        dst = os.path.normpath(os.fspath(dst))
        parent, version = os.path.split(dst)
        staging = epath.Path(parent) / f"{_INCOMPLETE}nnd{os.getpid()}_{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        for f in files:
            with f.open("rb") as reader, (staging / f.name).open("wb") as writer:
                shutil.copyfileobj(reader, writer, 16 << 20)
        if not remote:
            shutil.rmtree(dst, ignore_errors=True)  # a copy cut short by an older nnd
            os.replace(staging, dst)
    except BaseException:
        if not remote:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _is_variant(path) -> bool:
    from etils import epath  # noqa: PLC0415

    return (epath.Path(path) / "dataset_info.json").exists()


def prepare(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
            cache: str | None = None, probe_timeout: float = PROBE_TIMEOUT_S) -> str:
    """Prepares tfds dataset ``name`` (cifar10 | mnist) as array_record; returns its folder.

    Where: ``data_dir`` (default :func:`tfds_data_dir`), a local folder. Nothing is done
    if the dataset is there already. Else, with ``cache`` (a folder or ``gs://`` URL
    that several hosts share) holding ``NAME/VERSION``, that copy is fetched; otherwise
    tfds's builder downloads the raw files (or takes them from ``manual_dir``), checks
    their registered checksums and writes the array_record files (this step imports
    TensorFlow), and the result is put into ``cache`` for the next host.

    Raises:
      DataError: in one line, when the data cannot be prepared: no TensorFlow, raw
        files missing from ``manual_dir``, the download server unreachable (within
        ``probe_timeout`` seconds), a failed download or a wrong checksum.
    """
    spec = IMAGES.get(name)
    if spec is None or spec.tfds_name is None:
        prepared = sorted(n for n, s in IMAGES.items() if s.tfds_name)
        raise ValueError(f"{name!r} needs no preparation; prepare one of {prepared}")
    import requests  # noqa: PLC0415  (a tfds dependency)
    import tensorflow_datasets as tfds  # noqa: PLC0415
    from tensorflow_datasets.core.download.download_manager import (  # noqa: PLC0415
        NonMatchingChecksumError)

    data_dir = tfds_data_dir(data_dir)
    if "://" in data_dir:
        raise DataError(f"--data_dir={data_dir}: prepare into a local folder (tfds writes "
                        f"array_record files locally); share it with --cache={data_dir}")
    with _quiet_variant_warnings():
        if tfds.builder(spec.tfds_name, data_dir=data_dir).is_prepared():
            return os.fspath(_check_prepared(tfds, spec.tfds_name, data_dir).data_dir)
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format=_FILE_FORMAT)
    target = os.fspath(builder.data_dir)
    cached = f"{cache.rstrip('/')}/{spec.tfds_name}/{builder.version}" if cache else None
    _remove_incomplete(target)
    if cached and _is_variant(cached):
        _say(f"copying {name} from {cached} to {target}")
        _copy_variant(cached, target)
        return target

    if importlib.util.find_spec("tensorflow") is None:
        raise DataError(f"preparing {name} needs TensorFlow (tfds extracts and encodes the images "
                        "with it): pip install -r requirements.txt (it lists tensorflow-cpu)")
    urls = _raw_files(builder)
    if manual_dir:
        missing = sorted(f for f in urls.values()
                         if not os.path.exists(os.path.join(manual_dir, f)))
        if missing:
            raise DataError(f"--manual_dir={manual_dir} lacks {', '.join(missing)} (the raw files "
                            f"of {name}, as downloaded from {next(iter(urls))})")
        _say(f"preparing {name} in {data_dir} from the files in {manual_dir}")
    else:
        _probe(name, urls, data_dir, probe_timeout)
        size = sum(int(i.size) for i in (type(builder).url_infos or {}).values()) / 2**20
        hosts = ", ".join(sorted({urllib.parse.urlparse(u).netloc for u in urls}))
        _say(f"preparing {name} in {data_dir}: downloading {size:.0f} MiB from {hosts}")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except (requests.exceptions.RequestException, tfds.download.DownloadError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"downloading {name} failed: {reason[:200]}; run the same command "
                        "again to resume") from err
    except NonMatchingChecksumError as err:
        where = manual_dir or os.path.join(data_dir, "downloads")
        raise DataError(f"a raw file of {name} in {where} has the wrong checksum (a truncated "
                        "download, or another file under the same name): delete it and run "
                        "again") from err
    if cached:
        _say(f"copying {name} to {cached} for the other hosts")
        _copy_variant(target, cached)
    return target


def _describe(name: str, path: str, seconds: float) -> str:
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = tfds.builder_from_directory(path)
    counts = ", ".join(f"{s.num_examples} {k}" for k, s in sorted(builder.info.splits.items()))
    size = sum(f.stat().st_size for f in os.scandir(path) if f.is_file()) / 2**20
    return f"{name} ready in {path} ({counts} examples, {size:.0f} MiB; {seconds:.0f} s)"


def main(argv=None) -> int:
    """``python -m nnd.data prepare NAME... [--data_dir] [--manual_dir] [--cache] [--debug]``."""
    parser = argparse.ArgumentParser(
        prog="python -m nnd.data",
        description="Prepare image datasets ahead of training (tfds, array_record files).")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="download and prepare datasets")
    p.add_argument("names", nargs="+", metavar="NAME",
                   choices=sorted(n for n, s in IMAGES.items() if s.tfds_name))
    p.add_argument("--data_dir", default=None,
                   help="local folder for the prepared data (default: $TFDS_DATA_DIR, else "
                        "~/tensorflow_datasets); train with TFDS_DATA_DIR set to the same folder")
    p.add_argument("--manual_dir", default=None,
                   help="a folder holding the raw files (cifar-10-binary.tar.gz; MNIST's four "
                        "*-ubyte.gz files): no download")
    p.add_argument("--cache", default=None,
                   help="folder or gs:// URL shared by several hosts: copy NAME/VERSION from it "
                        "if there, else prepare and put it there")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's INFO lines (oneDNN) hidden
    if not sys.stderr.isatty():  # a log file, not a terminal: no progress bars
        import tensorflow_datasets as tfds  # noqa: PLC0415

        tfds.disable_progress_bar()
    for name in args.names:
        start = time.time()
        data_dir = tfds_data_dir(args.data_dir)
        try:
            with paths.interruptible(f"preparing {name}", f"nothing half-made is left in "
                                     f"{data_dir}; rerun the same command to prepare it"):
                path = prepare(name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                               cache=args.cache)
        except DataError as err:
            if args.debug:
                raise
            _say(str(err))
            return 2
        _say(_describe(name, path, time.time() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
