"""Tests for preparing CIFAR-10 and MNIST (``python -m nnd.data prepare``), offline.

Raw files are made in the real formats: CIFAR-10's ``cifar-10-binary.tar.gz``
(``cifar-10-batches-bin/data_batch_1..5.bin``, ``test_batch.bin``: records of one label
byte and 3072 image bytes, channel-major; ``batches.meta.txt``) and MNIST's idx files
(``*-idx3-ubyte.gz``, ``*-idx1-ubyte.gz``: big-endian magic and sizes, then bytes).
tfds's own builders prepare them; the download is replaced by tfds's ``manual_dir``
(the raw files are taken from a folder) and the builder's registered checksums by the
fake files' checksums. Nothing here reaches the network: sockets to the outside fail
(:func:`no_network`). Training then reads the result through nnd's own loader.
"""

import gzip
import io
import os
import socket
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from nnd import data, defaults, evaluate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"]
#: Records per file: CIFAR-10 has five train files and one test file; MNIST one each.
CIFAR_PER_FILE, CIFAR_TEST, MNIST_TRAIN, MNIST_TEST = 2, 3, 8, 4
#: A proxy that refuses every connection: the subprocesses below cannot download.
OFFLINE_ENV = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "NO_PROXY": "", "no_proxy": ""}


@pytest.fixture
def no_network(monkeypatch):
    """Internet sockets and name look-ups fail at once (local and Unix sockets still work)."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host):
        return host in ("localhost", "127.0.0.1", "::1")

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            raise OSError(f"this test has no network (connect to {address})")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not local(host):
            raise socket.gaierror(f"this test has no network (look-up of {host})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


# ---------------------------------------------------------------------------------------
# raw files in the real formats


def _cifar_archive(raw_dir, rng):
    """cifar-10-binary.tar.gz as published; returns {split: images uint8 [N, 32, 32, 3]}."""
    images = {"train": [], "test": []}
    with tarfile.open(raw_dir / "cifar-10-binary.tar.gz", "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        files = [(f"data_batch_{i}.bin", "train", CIFAR_PER_FILE) for i in range(1, 6)]
        for name, split, n in files + [("test_batch.bin", "test", CIFAR_TEST)]:
            labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
            chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # R, G, B planes
            add(name, np.concatenate([labels, chw.reshape(n, -1)], axis=1).tobytes())
            images[split].append(chw.transpose(0, 2, 3, 1))
        add("batches.meta.txt", ("\n".join(CIFAR_LABELS) + "\n\n").encode())
    return {k: np.concatenate(v) for k, v in images.items()}


def _idx_gz(path, magic, array):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _mnist_files(raw_dir, rng):
    """MNIST's four idx files as published; returns {split: images uint8 [N, 28, 28, 1]}."""
    images = {}
    for split, prefix, n in (("train", "train", MNIST_TRAIN), ("test", "t10k", MNIST_TEST)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        _idx_gz(raw_dir / f"{prefix}-images-idx3-ubyte.gz", 2051, x)
        _idx_gz(raw_dir / f"{prefix}-labels-idx1-ubyte.gz", 2049,
                rng.integers(0, 10, (n,), dtype=np.uint8))
        images[split] = x[..., None]
    return images


@pytest.fixture
def raw(tmp_path, monkeypatch):
    """A folder of fake raw files for both datasets, and tfds's builders set up to take them.

    Two things differ from the real files, and only those are patched: their sha256
    (each builder's registered checksums become the fake files' own), and MNIST's record
    counts, which tfds's MNIST builder hard-codes (60000 and 10000) rather than reading
    them from the idx header.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    rng = np.random.default_rng(0)
    images = {"cifar10": _cifar_archive(raw_dir, rng), "mnist": _mnist_files(raw_dir, rng)}
    for name in images:
        cls = tfds.builder_cls(name)
        fake = {}
        for url, info in cls.url_infos.items():
            fake[url] = checksums.compute_url_info(raw_dir / info.filename)
            fake[url].filename = info.filename
        monkeypatch.setattr(cls, "url_infos", fake)
    mnist_module = sys.modules[tfds.builder_cls("mnist").__module__]
    monkeypatch.setattr(mnist_module, "_TRAIN_EXAMPLES", MNIST_TRAIN)
    monkeypatch.setattr(mnist_module, "_TEST_EXAMPLES", MNIST_TEST)
    return raw_dir, images


def _levels_match(x_NxHxWxC, images_MxHxWxC, num_levels=256, tol=1e-4):
    """Per example: the index of the image it dequantises (z ∈ [n, n + 1]); -1 if none."""
    z = (np.asarray(x_NxHxWxC, np.float64) + 1.0) * num_levels / 2.0
    d = np.abs(z[:, None] - (images_MxHxWxC[None].astype(np.float64) + 0.5))
    ok = d.reshape(len(z), len(images_MxHxWxC), -1).max(-1) <= 0.5 + tol
    return np.where(ok.any(1), ok.argmax(1), -1)


def _tiny_config(name):
    config = defaults.image(name, "gaussian")
    config.data.batch_size = 4
    small = dict(channels=8, num_blocks=1, channel_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(), embed_dim=8, dropout=0.0)
    for field, value in small.items():
        if field in config.model:
            config.model[field] = value
    config.loss.num_steps = 10
    config.train.num_steps = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.sample_every = 0
    config.optim.warmup_steps = 1
    return config


# ---------------------------------------------------------------------------------------
# prepare with tfds's real builders, then train through nnd's loader


VERSIONS = {"cifar10": "3.0.2", "mnist": "3.0.1"}


@pytest.mark.slow  # end-to-end or many compiles; the fast tier stays under 5 minutes
@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_prepare_fake_raw_files_and_read_every_record_back(tmp_path, raw, no_network, name):
    raw_dir, images = raw
    data_dir = tmp_path / "tfds"
    path = data.prepare(name, data_dir=str(data_dir), manual_dir=str(raw_dir))
    assert path == str(data_dir / name / VERSIONS[name])
    assert any(f.startswith(f"{name}-train.array_record") for f in os.listdir(path))
    # Every record arrives as it was written (CIFAR: channel-major bytes to H x W x C).
    for split in ("train", "test"):
        source = data.image_source(name, split, data_dir=str(data_dir))
        got = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
        want = images[name][split]
        assert got.shape == want.shape
        order = np.lexsort(got.reshape(len(got), -1).T)  # tfds shuffles on write
        np.testing.assert_array_equal(got[order], want[np.lexsort(want.reshape(len(want), -1).T)])
    # Prepared data is left alone: the second call neither downloads nor writes.
    start = time.time()
    assert data.prepare(name, data_dir=str(data_dir)) == path
    assert time.time() - start < 5


@pytest.mark.slow  # 30 to 50 s each on 2 busy cores, nearly all of it compiling the train step
@pytest.mark.plumbing
@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_train_two_steps_on_prepared_fake_data(tmp_path, raw, no_network, monkeypatch, name):
    raw_dir, images = raw
    data_dir = tmp_path / "tfds"
    data.prepare(name, data_dir=str(data_dir), manual_dir=str(raw_dir))
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))  # as a user points training at it
    # The training batches dequantise the prepared images (CIFAR-10: possibly mirrored).
    batch = data.Batches(name, seed=0, global_batch=4, process_index=0, process_count=1)(0)
    train_images = images[name]["train"]
    if name == "cifar10":
        train_images = np.concatenate([train_images, train_images[:, :, ::-1]])
    assert np.all(_levels_match(batch, train_images) >= 0)

    state = train.train(_tiny_config(name), str(tmp_path / "workdir"))
    assert int(state.step) == 2
    assert os.listdir(tmp_path / "workdir" / "checkpoints") == ["2"]


def test_the_command_prepares_from_a_cache_folder_without_downloading(
        tmp_path, raw, no_network, capsys):
    raw_dir, _ = raw
    cache = tmp_path / "cache"  # stands in for a gs:// folder the hosts share
    first = ["prepare", "mnist", f"--data_dir={tmp_path / 'host0'}", f"--cache={cache}"]
    assert data.main(first + [f"--manual_dir={raw_dir}"]) == 0
    assert sorted(os.listdir(cache / "mnist" / "3.0.1")) == sorted(
        os.listdir(tmp_path / "host0" / "mnist" / "3.0.1"))
    second = ["prepare", "mnist", f"--data_dir={tmp_path / 'host1'}", f"--cache={cache}"]
    assert data.main(second) == 0
    lines = capsys.readouterr().err.splitlines()
    assert f"nnd: copying mnist from {cache}/mnist/3.0.1 to {tmp_path}/host1/mnist/3.0.1" in lines
    assert lines[-1].startswith(f"nnd: mnist ready in {tmp_path}/host1/mnist/3.0.1 "
                                f"({MNIST_TEST} test, {MNIST_TRAIN} train examples")
    source = data.image_source("mnist", "train", data_dir=str(tmp_path / "host1"))
    assert len(source) == MNIST_TRAIN


def test_cache_in_a_gs_bucket(tmp_path, raw, no_network):
    """The same through gs:// (a fake GCS on loopback, reached through gcsfs)."""
    fake_gcs = pytest.importorskip("tests.fake_gcs")
    from etils.epath import gpath

    raw_dir, _ = raw
    # epath decides once per process between tf.io.gfile and gcsfs for gs:// paths
    # (EPATH_USE_TF, which serve() sets to 0); let it decide afresh inside and after.
    gpath._is_tf_installed.cache_clear()
    try:
        with fake_gcs.serve() as (store, _):
            assert data.main(["prepare", "mnist", f"--data_dir={tmp_path / 'host0'}",
                              "--cache=gs://bucket/tfds", f"--manual_dir={raw_dir}"]) == 0
            prepared = sorted(os.listdir(tmp_path / "host0" / "mnist" / "3.0.1"))
            assert store.names("bucket") == [f"tfds/mnist/3.0.1/{f}" for f in prepared]
            assert data.main(["prepare", "mnist", f"--data_dir={tmp_path / 'host1'}",
                              "--cache=gs://bucket/tfds"]) == 0
    finally:
        gpath._is_tf_installed.cache_clear()
    assert len(data.image_source("mnist", "test", data_dir=str(tmp_path / "host1"))) == MNIST_TEST


def test_data_prepared_as_tfrecord_is_named_as_such(tmp_path, raw, no_network):
    import tensorflow_datasets as tfds

    raw_dir, _ = raw
    builder = tfds.builder("mnist", data_dir=str(tmp_path))  # tfds's default format
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
    message = f"mnist in {tmp_path} is prepared as tfrecord, but nnd reads array_record"
    with pytest.raises(data.DataError, match=message):
        data.image_source("mnist", "train", data_dir=str(tmp_path))
    with pytest.raises(data.DataError, match=message):
        data.prepare("mnist", data_dir=str(tmp_path))


def test_manual_dir_without_the_raw_files_is_one_line(tmp_path, no_network):
    with pytest.raises(data.DataError, match=r"--manual_dir=\S+ lacks cifar-10-binary.tar.gz"):
        data.prepare("cifar10", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------
# without prepared data and without network: fast, one line, no download


def test_unprepared_data_is_one_line_naming_dataset_folder_and_command(tmp_path, no_network,
                                                                         monkeypatch):
    import tensorflow_datasets as tfds

    def no_download(*args, **kwargs):
        raise AssertionError("the loader must not download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    empty = tmp_path / "tfds"
    start = time.time()
    with pytest.raises(data.DataError) as err:
        data.image_source("cifar10", "train", data_dir=str(empty))
    assert time.time() - start < 5
    assert str(err.value) == (
        f"cifar10 is not prepared in {empty} (no cifar10/3.0.2 there); prepare it first: "
        f"python -m nnd.data prepare cifar10 --data_dir={empty}")
    assert isinstance(err.value, FileNotFoundError)  # nnd.main prints it as one line

    # Training finds out before it compiles anything.
    monkeypatch.setenv("TFDS_DATA_DIR", str(empty))
    with pytest.raises(data.DataError, match="python -m nnd.data prepare mnist --data_dir="):
        train.train(_tiny_config("mnist"), str(tmp_path / "workdir"))


def test_training_without_data_prints_one_line(tmp_path):
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), **OFFLINE_ENV)
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "nnd.main", "--config=configs/cifar_uniform.py",
         f"--workdir={tmp_path / 'workdir'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.time() - start
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("nnd: ")] == [
        f"nnd: cifar10 is not prepared in {tmp_path / 'tfds'} (no cifar10/3.0.2 there); "
        f"prepare it first: python -m nnd.data prepare cifar10 --data_dir={tmp_path / 'tfds'}"]
    assert seconds < 60  # about 5 s, nearly all of it importing jax


def test_prepare_without_network_fails_fast_in_one_line(tmp_path):
    env = dict(os.environ, **OFFLINE_ENV)
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "nnd.data", "prepare", "cifar10", f"--data_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.time() - start
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "nnd: cannot download cifar10: www.cs.toronto.edu is unreachable (ProxyError). Without "
        "internet, put cifar-10-binary.tar.gz in a folder and add --manual_dir=FOLDER, or copy "
        f"a prepared cifar10/ folder into {tmp_path}"]
    assert seconds < 30  # about 4 s; tfds's own retries took 207 s


# ---------------------------------------------------------------------------------------
# sample and eval look for a checkpoint before any data


@pytest.mark.parametrize("mode", [evaluate.sample, evaluate.evaluate])
def test_sample_and_eval_want_a_checkpoint_before_data(tmp_path, no_network, monkeypatch, mode):
    def no_data(*args, **kwargs):
        raise AssertionError("read data before finding a checkpoint")

    monkeypatch.setattr(data, "image_source", no_data)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="train first"):
        mode(_tiny_config("cifar10"), str(tmp_path / "workdir"))


# ---------------------------------------------------------------------------------------
# launch/tpu_install.sh --prepare: the data on every worker, through a bucket if given


def _install_dry_run(*args):
    env = dict(os.environ, PROJECT="p", ZONE="z", TPU_NAME="t", DRY_RUN="1")
    return subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_install.sh"), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_tpu_install_prepares_on_worker_0_into_the_cache_then_on_every_worker():
    result = _install_dry_run("--prepare=cifar10 mnist", "--data-cache=gs://b/tfds")
    assert result.returncode == 0, result.stderr
    prepare = ('cd nnd && "$HOME"/nnd-venv/bin/python -m nnd.data prepare cifar10 mnist '
               '--cache=gs://b/tfds')
    ssh = "+ gcloud compute tpus tpu-vm ssh t --worker={} --zone=z --project=p --command="
    lines = result.stdout.splitlines()
    assert lines[-2:] == [ssh.format(0) + f"'{prepare}'", ssh.format("all") + f"'{prepare}'"]
    result = _install_dry_run("--prepare=mnist")
    assert result.stdout.splitlines()[-1].endswith("python -m nnd.data prepare mnist'")
    assert "--worker=0" not in result.stdout
    assert "nnd.data" not in _install_dry_run().stdout


def test_tpu_install_refuses_datasets_that_need_no_preparation():
    result = _install_dry_run("--prepare=digits")
    assert result.returncode == 2 and "only cifar10 and mnist" in result.stderr
    result = _install_dry_run("--data-cache=gs://b/tfds")
    assert result.returncode == 2 and "PREPARE names no dataset" in result.stderr
