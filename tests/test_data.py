import os

import numpy as np
import pytest
import torch
from PIL import Image

import loaders

CLASSES = ["airplane", "automobile", "bird"]


def make_cifar_folder(root, per_class=(4, 2), size=32, seed=0):
    """A tiny CIFAR-style image folder: train/<class>/*.png and test/<class>/*.png,
    each image a flat colour that encodes its class."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for c, name in enumerate(CLASSES):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                pixels = np.full((size, size, 3), 40 + 80 * c, dtype=np.uint8)
                pixels[0, 0] = rng.integers(0, 255, 3)
                Image.fromarray(pixels).save(os.path.join(root, split, name, f"{i:04d}.png"))
    return root


def test_image_folder_is_detected_and_read(tmp_path):
    root = make_cifar_folder(str(tmp_path))
    assert loaders.is_cifar_image_folder(root)
    train = loaders.load_cifar10(root, "train")
    test = loaders.load_cifar10(root, "test")
    assert train.images.shape == (12, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 6 and train.classes == CLASSES
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert train.images[5, :, 10, 10].tolist() == [120, 120, 120]  # class 1 colour, RGB order


def test_batches_are_normalized(tmp_path):
    data = loaders.load_cifar10(make_cifar_folder(str(tmp_path)), "test")
    x, y = next(data.batches(4))
    expected = (40 / 255 - loaders.CIFAR10_MEAN[0]) / loaders.CIFAR10_STD[0]
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    assert x[0, 0, 5, 5].item() == pytest.approx(expected, abs=1e-5)


def test_random_crop_flip_moves_pixels_within_padding():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = loaders.random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    for n in range(2):
        # every output row is a (possibly flipped, shifted) slice of an input row or padding
        values = set(out[n].flatten().tolist()) - {0}
        assert values <= set(images[n].flatten().tolist())
        assert len(values) >= 3 * 6 * 6  # at most 2 rows/columns lost to the shift


def test_missing_data_names_the_flag(tmp_path):
    with pytest.raises(loaders.DataError, match="--data"):
        loaders.load_cifar10(str(tmp_path), "train")


def test_imagenet_folder_uses_full_class_index(tmp_path):
    wnids = [f"n{i:08d}" for i in range(1000)]
    (tmp_path / "synset_words.txt").write_text("".join(f"{w} name {i}\n" for i, w in enumerate(wnids)))
    for w in (wnids[3], wnids[998]):
        os.makedirs(tmp_path / w)
        Image.fromarray(np.zeros((300, 260, 3), dtype=np.uint8)).save(tmp_path / w / "a.JPEG")
    ds = loaders.imagenet_dataset(str(tmp_path))
    assert [label for _, label in ds.samples] == [3, 998]
    x, label = ds[1]
    assert x.shape == (3, 224, 224) and label == 998
