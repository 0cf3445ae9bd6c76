"""Tests for lra/image.py: TF-exact grayscale, CIFAR-10 pickles, MNIST-family IDX files, pixel normalisation."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from lra import image
from lra.errors import LRADataError
from lra.tasks import get_task

SIDE = 32
PIXELS = SIDE * SIDE


def reference_gray(red, green, blue):
    """tf.image.rgb_to_grayscale on uint8 written out in float64: floor((.2989 R + .587 G + .114 B) * 255.5/255)."""
    weighted = 0.2989 * np.asarray(red, float) + 0.5870 * np.asarray(green, float) + 0.1140 * np.asarray(blue, float)
    return np.floor(weighted / 255.0 * 255.5), weighted / 255.0 * 255.5


def official_pickle(batch: dict) -> bytes:
    """A CIFAR batch pickled as the official files are: protocol 2, numpy.core.multiarray._reconstruct."""
    payload = pickle.dumps(batch, protocol=2)
    # numpy >= 2 writes numpy._core; the official (numpy 1.x, Python 2) files name numpy.core.
    return payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def make_cifar_batch(images_rgb: np.ndarray, labels, label=b"training batch") -> dict:
    """images_rgb (n, 32, 32, 3) uint8 -> the official dict: data rows are R, G, B planes, each row-major."""
    data = np.ascontiguousarray(images_rgb.transpose(0, 3, 1, 2).reshape(len(images_rgb), 3 * PIXELS))
    return {
        b"batch_label": label,
        b"labels": [int(y) for y in labels],
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(len(images_rgb))],
    }


def known_image() -> np.ndarray:
    """(32, 32, 3) uint8 with hand-checkable pixels; every other pixel black."""
    picture = np.zeros((SIDE, SIDE, 3), np.uint8)
    picture[0, 0] = (255, 0, 0)  # red   -> floor(.2989 * 255.5) = 76
    picture[0, 1] = (0, 255, 0)  # green -> floor(.5870 * 255.5) = 149 (rounding would give 150)
    picture[0, 2] = (0, 0, 255)  # blue  -> floor(.1140 * 255.5) = 29
    picture[0, 3] = (255, 255, 255)  # white -> 255
    picture[1, 2] = (10, 200, 30)  # -> floor((2.989 + 117.4 + 3.42) * 255.5 / 255) = 124
    picture[31, 31] = (7, 7, 7)  # gray stays gray
    return picture


def write_cifar(root, train_images, train_labels, test_images, test_labels):
    directory = os.path.join(root, image.CIFAR_DIR)
    os.makedirs(directory, exist_ok=True)
    per_batch = len(train_images) // 5
    for i, name in enumerate(image.CIFAR_TRAIN_BATCHES):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        batch = make_cifar_batch(train_images[rows], train_labels[rows])
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(official_pickle(batch))
    with open(os.path.join(directory, image.CIFAR_TEST_BATCH), "wb") as handle:
        handle.write(official_pickle(make_cifar_batch(test_images, test_labels, b"testing batch")))
    return directory


@pytest.fixture
def cifar(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, size=(15, SIDE, SIDE, 3), dtype=np.uint8)
    train_images[4] = known_image()
    train_labels = rng.integers(0, 10, size=15)
    test_images = rng.integers(0, 256, size=(4, SIDE, SIDE, 3), dtype=np.uint8)
    test_labels = np.array([9, 0, 3, 3])
    write_cifar(tmp_path, train_images, train_labels, test_images, test_labels)
    return str(tmp_path), train_images, train_labels, test_images, test_labels


def test_grayscale_hand_values():
    pixels = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [10, 200, 30]], np.uint8)
    assert image.rgb_to_grayscale(pixels).tolist() == [76, 149, 29, 255, 0, 124]
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(image.rgb_to_grayscale(np.stack([levels] * 3, axis=-1)), levels)
    with pytest.raises(ValueError, match="uint8"):
        image.rgb_to_grayscale(pixels.astype(np.int32))


def test_grayscale_agrees_with_the_float64_formula_away_from_integer_boundaries():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(200_000, 3), dtype=np.uint8)
    expected, exact = reference_gray(rgb[:, 0], rgb[:, 1], rgb[:, 2])
    got = image.rgb_to_grayscale(rgb).astype(float)
    differs = got != expected
    # float32 may differ from float64 only by one level, and only when the exact value is within 1e-4 of an integer.
    assert np.all(np.abs(got - expected) <= 1)
    assert np.all(np.abs(exact[differs] - np.round(exact[differs])) < 1e-4)
    assert differs.mean() < 1e-3


def test_cifar_tokens_labels_and_splits(cifar):
    data_dir, train_images, train_labels, test_images, test_labels = cifar
    splits = image.load_cifar10(data_dir, val_size=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [12, 3, 4]
    for split in splits.values():
        assert split.inputs.dtype == np.int32 and split.inputs.shape[1] == PIXELS == get_task("image").seq_len
    train_all = np.concatenate([splits["train"].inputs, splits["val"].inputs])
    np.testing.assert_array_equal(np.concatenate([splits["train"].labels, splits["val"].labels]), train_labels)
    np.testing.assert_array_equal(splits["test"].labels, test_labels)
    known = train_all[4]  # row-major: pixel (r, c) is token r * 32 + c
    assert known[[0, 1, 2, 3, 1 * SIDE + 2, 31 * SIDE + 31]].tolist() == [76, 149, 29, 255, 124, 7]
    assert np.count_nonzero(known) == 6  # black pixels stay 0: real pixels, not padding
    for inputs, images in ((train_all, train_images), (splits["test"].inputs, test_images)):
        expected, _ = reference_gray(images[..., 0], images[..., 1], images[..., 2])
        assert np.abs(inputs - expected.reshape(len(images), PIXELS)).max() <= 1
        assert np.mean(inputs == expected.reshape(len(images), PIXELS)) > 0.999


def test_cifar_directory_may_be_given_directly_and_python3_pickles_load(cifar, tmp_path):
    data_dir = cifar[0]
    directory = os.path.join(data_dir, image.CIFAR_DIR)
    direct = image.load_cifar10(directory, val_size=3)
    # Re-pickle one batch the Python 3 way (protocol 4, str keys): same result.
    batch_path = os.path.join(directory, "data_batch_2")
    data, labels = image.read_cifar_batch(batch_path)
    with open(batch_path, "wb") as handle:
        pickle.dump({"data": data, "labels": labels.tolist()}, handle, protocol=4)
    again = image.load_cifar10(data_dir, val_size=3)
    np.testing.assert_array_equal(direct["train"].inputs, again["train"].inputs)


def test_cifar_default_split_sizes_follow_lra(cifar):
    with pytest.raises(ValueError, match="val_size"):
        image.load_cifar10(cifar[0])  # 5000 validation images cannot come from 15
    for bad in (0, 15):
        with pytest.raises(ValueError, match="val_size"):
            image.load_cifar10(cifar[0], val_size=bad)


def corrupt(directory, name, content: bytes):
    with open(os.path.join(directory, image.CIFAR_DIR, name), "wb") as handle:
        handle.write(content)


def test_cifar_errors_name_the_file(cifar):
    data_dir = cifar[0]
    path = os.path.join(data_dir, image.CIFAR_DIR, "data_batch_3")
    with open(path, "rb") as handle:
        good = handle.read()
    cases = [
        (good[: len(good) // 2], "not a readable CIFAR-10 pickle"),
        (b"", "not a readable CIFAR-10 pickle"),
        (pickle.dumps([1, 2, 3], protocol=2), "expected a pickled dict"),
        (pickle.dumps({b"labels": [0]}, protocol=2), "no 'data' entry"),
        (pickle.dumps({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}), r"shape \(n, 3072\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "2 images but labels"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "record 1: label"),
        (pickle.dumps({b"data": os.getcwd}, protocol=2), "refusing to load the global"),
    ]
    for content, fragment in cases:
        corrupt(data_dir, "data_batch_3", content)
        with pytest.raises(LRADataError, match=rf"data_batch_3.*{fragment}"):
            image.load_cifar10(data_dir, val_size=3)
    os.remove(path)
    with pytest.raises(LRADataError, match=r"data_batch_3: CIFAR-10 batch not found"):
        image.load_cifar10(data_dir, val_size=3)


# ---------------------------------------------------------------------------------------------------------
# IDX (MNIST family).


def idx_bytes(array) -> bytes:
    array = np.asarray(array)
    magic = image.IDX_IMAGES_MAGIC if array.ndim == 3 else image.IDX_LABELS_MAGIC
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", size) for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(directory, train_images, train_labels, test_images, test_labels, *, gzipped=False):
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for key, array in arrays.items():
        content = idx_bytes(array)
        name = image.IDX_FILES[key]
        if gzipped:
            content, name = gzip.compress(content), name + ".gz"
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(content)
    return str(directory)


@pytest.fixture
def mnist_arrays():
    rng = np.random.default_rng(2)
    train_images = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    train_images[0] = 0
    train_images[0, 2, 5] = 200  # pixel (2, 5) -> position 2 * 28 + 5 = 61
    return train_images, rng.integers(0, 10, 10), rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), [7, 0, 9]


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_tokens_labels_and_splits(tmp_path, mnist_arrays, gzipped):
    train_images, train_labels, test_images, test_labels = mnist_arrays
    directory = write_idx_set(tmp_path, *mnist_arrays, gzipped=gzipped)
    splits = image.load_idx_images(directory, val_size=4)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 4, 3]
    np.testing.assert_array_equal(splits["train"].inputs, train_images[:6].reshape(6, 784))
    np.testing.assert_array_equal(splits["val"].inputs, train_images[6:].reshape(4, 784))
    np.testing.assert_array_equal(splits["test"].inputs, test_images.reshape(3, 784))
    assert splits["train"].labels.tolist() == list(train_labels[:6])
    assert splits["val"].labels.tolist() == list(train_labels[6:])
    assert splits["test"].labels.tolist() == test_labels
    assert splits["train"].inputs.dtype == np.int32
    assert np.flatnonzero(splits["train"].inputs[0]).tolist() == [61]
    for name in ("mnist", "pmnist", "fashion_mnist"):
        assert get_task(name).seq_len == 784 and get_task(name).num_classes == 10 and not get_task(name).padded


def test_permuted_variant_applies_one_fixed_permutation(tmp_path, mnist_arrays):
    directory = write_idx_set(tmp_path, *mnist_arrays)
    plain = image.load_idx_images(directory, val_size=4)
    permuted = image.load_idx_images(directory, permuted=True, permutation_seed=5, val_size=4)
    order = image.pixel_permutation(784, 5)
    assert sorted(order.tolist()) == list(range(784)) and order.tolist() != list(range(784))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(permuted[split].inputs, plain[split].inputs[:, order])
        np.testing.assert_array_equal(permuted[split].labels, plain[split].labels)
    # Position t holds original pixel order[t]: the single bright pixel 61 moves to where order == 61.
    assert np.flatnonzero(permuted["train"].inputs[0]).tolist() == np.flatnonzero(order == 61).tolist()
    again = image.load_idx_images(directory, permuted=True, permutation_seed=5, val_size=4)
    np.testing.assert_array_equal(again["test"].inputs, permuted["test"].inputs)
    other = image.load_idx_images(directory, permuted=True, permutation_seed=6, val_size=4)
    assert not np.array_equal(other["test"].inputs, permuted["test"].inputs)


def test_idx_errors_name_the_file(tmp_path, mnist_arrays):
    train_images, train_labels, test_images, test_labels = mnist_arrays
    directory = write_idx_set(tmp_path, *mnist_arrays)
    images_path = os.path.join(directory, image.IDX_FILES["train_images"])
    labels_path = os.path.join(directory, image.IDX_FILES["train_labels"])
    good = idx_bytes(train_images)
    cases = [
        (images_path, b"\x00\x00\x08\x01" + good[4:], "IDX magic 0x00000801, expected 0x00000803"),
        (images_path, good[:-1], r"need 7840 data bytes, found 7839"),
        (images_path, good + b"\x00", r"need 7840 data bytes, found 7841"),
        (images_path, good[:10], "IDX header truncated"),
        (images_path, good[:2], "too short"),
        (images_path, gzip.compress(good)[:-12], "corrupt or truncated gzip"),
        (labels_path, idx_bytes(np.asarray(train_labels[:9])), "10 images but .* 9 labels"),
        (labels_path, idx_bytes(np.asarray([10] + list(train_labels[1:]))), "record 0: label must be 0..9"),
    ]
    for path, content, fragment in cases:
        write_idx_set(directory, *mnist_arrays)
        with open(path, "wb") as handle:
            handle.write(content)
        with pytest.raises(LRADataError, match=fragment) as error:
            image.load_idx_images(directory, val_size=4)
        assert os.path.basename(path) in str(error.value)
    write_idx_set(directory, *mnist_arrays)
    os.remove(os.path.join(directory, image.IDX_FILES["test_labels"]))
    with pytest.raises(LRADataError, match=r"t10k-labels-idx1-ubyte: IDX file not found"):
        image.load_idx_images(directory, val_size=4)
    write_idx_set(directory, train_images, train_labels, test_images[:, :14, :], test_labels)
    with pytest.raises(LRADataError, match="784 pixels but test images 392"):
        image.load_idx_images(directory, val_size=4)


# ---------------------------------------------------------------------------------------------------------
# The padding rule.


def test_pixel_tasks_are_unpadded_and_fit_the_vocabulary():
    for name in ("image", "pathfinder", "pathx"):
        assert not get_task(name).padded and get_task(name).vocab_size == image.PIXEL_VOCAB_SIZE
    assert all(get_task(name).padded for name in ("listops", "text", "retrieval"))
