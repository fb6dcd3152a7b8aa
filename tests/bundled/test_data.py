import gzip
import struct

import numpy as np
import pytest
import torch

from nested_diffusion.bundled.data import DEFAULT_DIR, IDXFormatError, find_data_dir, load_fashion_mnist, read_idx


def write_idx(path, arr, compress=True):
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_parses_idx_files_and_scales_to_minus_one_one(idx_dir):
    x, y = load_fashion_mnist("train", idx_dir)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3, 4, 5]
    raw = read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(x[:, 0], torch.from_numpy(raw.copy()).float() / 127.5 - 1)
    assert x.min() >= -1 and x.max() <= 1
    u8, _ = load_fashion_mnist("test", idx_dir, as_uint8=True)
    assert u8.dtype == torch.uint8 and u8.shape == (4, 1, 28, 28)


def test_uncompressed_files_work_too(tmp_path):
    write_idx(tmp_path / "a-idx1-ubyte", [1, 2, 3], compress=False)
    assert read_idx(tmp_path / "a-idx1-ubyte").tolist() == [1, 2, 3]


@pytest.mark.parametrize("corrupt,match", [
    (lambda raw: raw[:-10], r"IDX dimensions \[6, 28, 28\] need 4720 bytes, file has 4710"),
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], r"bad IDX magic number '00000d03'"),
    (lambda raw: raw[:6], r"truncated IDX header"),
])
def test_corrupt_files_are_rejected_clearly(idx_dir, corrupt, match):
    p = idx_dir / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(corrupt(gzip.decompress(p.read_bytes()))))
    with pytest.raises(IDXFormatError, match=match):
        load_fashion_mnist("train", idx_dir)


def test_bad_gzip_is_rejected(idx_dir):
    (idx_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(IDXFormatError, match="not a readable"):
        load_fashion_mnist("train", idx_dir)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(ValueError, match="split: 'val' is not valid"):
        load_fashion_mnist("val", tmp_path)


@pytest.mark.skipif(not (__import__("pathlib").Path(DEFAULT_DIR)).is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_real_fashion_mnist():
    assert find_data_dir() is not None
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    assert -1.0 == x.min().item() and x.max().item() == 1.0
