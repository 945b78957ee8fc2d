"""A gs:// workdir stays in the bucket: train, resume, eval and sample against a fake GCS.

The stand-in is :mod:`tests.fake_gcs`, an in-memory GCS served on loopback that both
clients of a real run talk to: gcsfs (through ``etils.epath``: orbax's metadata,
metrics, events, pictures) and TensorStore's ``gcs`` driver (orbax's arrays). fsspec's
``memory://`` cannot stand in: epath does not open it, and orbax hands every path but
``gs://`` to TensorStore's local ``file`` driver. Each test runs in an empty current
directory and checks that it stays empty.
"""

import json
import os
import struct

import numpy as np
import pytest

from nnd import checkpoints, defaults, evaluate, fid, paths, train
from tests import fake_gcs

pytestmark = pytest.mark.plumbing
PNG = b"\x89PNG\r\n\x1a\n"
WORKDIR = "gs://bucket/run"


@pytest.fixture(scope="module")
def gcs():
    with fake_gcs.serve() as (store, _):
        yield store
    assert not store.unsupported, store.unsupported


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert os.listdir(cwd) == [], "a remote workdir wrote to the local disk"


def _config(num_steps):
    config = defaults.default()
    config.data.batch_size = 32
    config.model.hidden, config.model.depth, config.model.embed_dim = 16, 1, 8
    config.loss.num_steps = 10
    config.train.num_steps = num_steps
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.train.sample_every = 4
    config.optim.warmup_steps = 2
    config.sampling.num_steps = 5
    config.sampling.num_samples = 20
    config.eval.num_examples = 16
    config.eval.batch_size = 16
    config.eval.likelihood = False
    config.eval.num_samples = 20
    config.eval.picture_laws = ("gaussian",)
    return config


def _events(data: bytes) -> list:
    """The Event protos of a TensorBoard event file's bytes (TFRecord framing)."""
    from tensorboard.compat.proto import event_pb2

    events, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 16 + length
    return events


def _values(store, prefix):
    """{tag: [(step, value or PNG bytes)]} over the event files below ``prefix``."""
    out = {}
    for name in store.names(prefix=prefix):
        if "/events.out.tfevents." not in name or name.count("/") != prefix.count("/"):
            continue
        for event in _events(store.read("bucket", name)):
            for v in event.summary.value:
                value = v.image.encoded_image_string if v.HasField("image") else v.simple_value
                out.setdefault(v.tag, []).append((event.step, value))
    return out


@pytest.mark.slow  # end-to-end or many compiles; the fast tier stays under 5 minutes
def test_train_eval_sample_and_resume_stay_in_the_bucket(gcs, empty_cwd, caplog):
    state = train.train(_config(4), WORKDIR)
    assert int(state.step) == 4
    names = gcs.names(prefix="run/")
    assert {"run/checkpoints/2/_CHECKPOINT_METADATA", "run/checkpoints/4/_CHECKPOINT_METADATA",
            "run/metrics.jsonl", "run/samples/step_4.png"} <= set(names)
    assert gcs.read("bucket", "run/samples/step_4.png")[:8] == PNG
    records = [json.loads(line) for line in gcs.read("bucket", "run/metrics.jsonl").splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    scalars = _values(gcs, "run/tensorboard/")
    assert [step for step, _ in scalars["loss"]] == [2, 4]
    np.testing.assert_allclose([v for _, v in scalars["loss"]], [r["loss"] for r in records],
                               rtol=1e-6)
    assert scalars["samples"][0][0] == 4 and scalars["samples"][0][1][:8] == PNG

    result = evaluate.evaluate(_config(4), WORKDIR)
    assert result["step"] == 4
    assert json.loads(gcs.read("bucket", "run/eval/metrics.json")) == json.loads(json.dumps(result))
    for picture in ("samples.png", "samples_by_law.png", "shift_kl.png"):
        assert gcs.read("bucket", f"run/eval/{picture}")[:8] == PNG
    on_tensorboard = _values(gcs, "run/tensorboard/eval/")
    assert on_tensorboard["eval/samples/energy_distance"] == [
        (4, pytest.approx(result["samples"]["energy_distance"], rel=1e-6))]
    assert on_tensorboard["eval/walk_bound/total_nats"][0][0] == 4
    assert {"eval/samples", "eval/samples_by_law", "eval/shift_kl"} <= set(on_tensorboard)

    samples = evaluate.sample(_config(4), WORKDIR)
    assert np.array_equal(paths.load_npz(f"{WORKDIR}/samples.npz")["samples"], samples)
    assert gcs.read("bucket", "run/samples.png")[:8] == PNG

    with caplog.at_level("INFO"):
        resumed = train.train(_config(6), WORKDIR)
    assert int(resumed.step) == 6 and "resumed from step 4 in gs://bucket/run" in caplog.text
    records = [json.loads(line) for line in gcs.read("bucket", "run/metrics.jsonl").splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert checkpoints.latest_step(WORKDIR) == 6


def test_fid_reference_statistics_cache_in_the_bucket(gcs, empty_cwd):
    images = np.random.default_rng(0).uniform(-1, 1, size=(12, 4, 4, 1))
    features = lambda x: np.asarray(x).reshape(len(x), -1)[:, :3]  # noqa: E731
    cache = "gs://bucket/cache/fid_ref.npz"
    mu, sigma = fid.reference_statistics(features, images, cache)
    assert gcs.names(prefix="cache/") == ["cache/fid_ref.npz"]
    again = fid.reference_statistics(lambda x: pytest.fail("recomputed"), images, cache)
    np.testing.assert_array_equal(again[0], mu)
    np.testing.assert_array_equal(again[1], sigma)


def test_an_unwritable_bucket_is_refused_in_one_line_before_training(gcs, empty_cwd):
    with pytest.raises(checkpoints.WorkdirError, match=r"workdir 'gs://no-such-bucket/run' is not "
                                                       r"writable: \w+"):
        train.train(_config(2), "gs://no-such-bucket/run")


def test_a_scheme_epath_cannot_open_is_refused_not_written_locally(empty_cwd):
    with pytest.raises(paths.UnsupportedPath, match="memory://run: etils.epath cannot open"):
        train.train(_config(2), "memory://run")
    with pytest.raises(paths.UnsupportedPath):
        evaluate.sample(_config(2), "memory://run")
