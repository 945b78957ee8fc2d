"""Tests for nnd.paths: whole writes, appends, npz and tree copies, local and on a fake GCS."""

import os

import numpy as np
import pytest

from nnd import paths
from tests import fake_gcs


@pytest.fixture(scope="module")
def gcs():
    with fake_gcs.serve() as (store, _):
        yield store
    assert not store.unsupported, store.unsupported


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("gcs")
    return f"gs://bucket/{request.node.name.replace('[', '_').rstrip(']')}"


def test_write_append_and_npz_round_trip(root):
    paths.write(f"{root}/a/b.txt", "one\n")
    paths.append(f"{root}/a/b.txt", b"two\n")
    paths.append(f"{root}/a/new.txt", "first\n")
    assert paths.get(f"{root}/a/b.txt").read_text() == "one\ntwo\n"
    assert paths.get(f"{root}/a/new.txt").read_text() == "first\n"
    paths.savez(f"{root}/x.npz", x=np.arange(3), y=np.eye(2))
    arrays = paths.load_npz(f"{root}/x.npz")
    np.testing.assert_array_equal(arrays["x"], np.arange(3))
    np.testing.assert_array_equal(arrays["y"], np.eye(2))
    paths.copytree(f"{root}/a", f"{root}/copy")
    assert sorted(p.name for p in paths.get(f"{root}/copy").iterdir()) == ["b.txt", "new.txt"]
    assert paths.get(f"{root}/copy/b.txt").read_text() == "one\ntwo\n"


def test_a_failed_local_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    paths.write(path, "old")

    def replace(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        paths.write(path, "new")
    assert os.listdir(tmp_path) == ["metrics.json"] and path.read_text() == "old"


def test_a_url_epath_cannot_open_is_an_error_not_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.is_remote("gs://b/x") and not paths.is_remote("runs/x")
    with pytest.raises(paths.UnsupportedPath, match=r"memory://x/y: etils.epath cannot open "
                                                    r"memory:// paths"):
        paths.write("memory://x/y", "data")
    assert os.listdir(tmp_path) == []
