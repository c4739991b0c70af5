"""Data for training and evaluation: CIFAR-10 and an ImageNet validation folder.

CIFAR-10 is small enough (50,000 images of 32x32) to hold decoded in memory as
one uint8 tensor; augmentation then runs batched on that tensor, which keeps
both cores on the network instead of on JPEG decoding.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(Exception):
    """Data that is missing or laid out in a way the loaders cannot read."""


def _class_folders(root):
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))


def _images_in(folder):
    return sorted(f.name for f in os.scandir(folder) if f.name.lower().endswith(IMAGE_EXTENSIONS))


def is_cifar_image_folder(root, splits=("train", "test")):
    """True where ``root`` holds ``<split>/<class>/*`` for each of ``splits``."""
    return all(os.path.isdir(os.path.join(root, split)) and _class_folders(os.path.join(root, split)) for split in splits)


class CifarTensors:
    """One CIFAR-10 split, decoded: ``images`` uint8 (N, 3, 32, 32), ``labels`` int64 (N,)."""

    def __init__(self, images, labels, classes):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        return CifarTensors(self.images[indices], self.labels[indices], self.classes)

    def batches(self, batch_size, indices=None, augment=False, generator=None):
        """Yields normalized float (x, y) batches in ``indices`` order."""
        if indices is None:
            indices = torch.arange(len(self))
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            x = self.images[idx]
            if augment:
                x = random_crop_flip(x, padding=4, generator=generator)
            yield normalize(x, CIFAR10_MEAN, CIFAR10_STD), self.labels[idx]


def normalize(images_uint8, mean, std):
    x = images_uint8.float().div_(255)
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def random_crop_flip(images, padding, generator=None):
    """The standard CIFAR augmentation, vectorized over the batch: zero-pad,
    take a random crop of the original size, flip half of the images."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


def _decode_folder(split_dir):
    classes = _class_folders(split_dir)
    images, labels = [], []
    for index, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        for file in _images_in(folder):
            with Image.open(os.path.join(folder, file)) as img:
                images.append(np.asarray(img.convert("RGB")))
            labels.append(index)
    if not images:
        raise DataError(f"no images found under {split_dir}")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"images under {split_dir} differ in size ({sorted(shapes)[:3]}...); CIFAR-10 images are all 32x32")
    array = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return CifarTensors(array, torch.tensor(labels, dtype=torch.int64), classes)


def load_cifar10(root, split):
    """Reads CIFAR-10 ``split`` ('train' or 'test') from ``root``: an image
    folder copy (``train/<class>/*``, ``test/<class>/*``) when that layout is
    there, else torchvision's format (``cifar-10-batches-py``). Never downloads."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if is_cifar_image_folder(root, (split,)):
        return _decode_folder(os.path.join(root, split))
    if os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        import torchvision

        try:
            ds = torchvision.datasets.CIFAR10(root, train=split == "train", download=False)
        except RuntimeError as err:
            raise DataError(f"CIFAR-10 under {root} is damaged ({err}); download it again") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return CifarTensors(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))
    raise DataError(
        f"no CIFAR-10 found at {root}: expected train/<class>/ and test/<class>/ image folders "
        f"or torchvision's cifar-10-batches-py; point --data at one (e.g. unpack cifar10-jpeg.tar.gz there)"
    )


class ImageFiles(torch.utils.data.Dataset):
    """(image file, class index) pairs with the ImageNet evaluation transform:
    resize 256, center crop 224, normalize."""

    def __init__(self, samples, size=224, resize=256):
        import torchvision.transforms as T

        self.samples = samples
        self.transform = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def read_wnids(path):
    """The first word of each line: ``synset_words.txt`` lists the 1,000
    wnids in torchvision's class-index order."""
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def imagenet_dataset(root, synsets=None):
    """An ImageNet validation folder ``root/<wnid>/*.JPEG`` (what
    ``imagenet_format.py`` writes).

    Class indices follow torchvision: the position of the wnid among all
    1,000 sorted wnids. A folder with fewer classes (a subset) needs the full
    list: ``synsets`` or ``root/synset_words.txt``.
    """
    if not os.path.isdir(root):
        raise DataError(f"no ImageNet folder at {root}; make one with imagenet_format.py and pass it with --data")
    wnids = _class_folders(root)
    if not wnids:
        raise DataError(f"{root} holds no class folders; make it with imagenet_format.py")
    synsets = synsets or os.path.join(root, "synset_words.txt")
    if len(wnids) == 1000:
        order = wnids
    elif os.path.isfile(synsets):
        order = read_wnids(synsets)
    else:
        raise DataError(f"{root} has {len(wnids)} classes, not 1000: the class indices need the full wnid list; put synset_words.txt in it or pass --synsets")
    index = {w: i for i, w in enumerate(order)}
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise DataError(f"{root} has class folders that are not ImageNet wnids: {', '.join(unknown[:5])}")
    samples = [(os.path.join(root, w, f), index[w]) for w in wnids for f in _images_in(os.path.join(root, w))]
    return ImageFiles(samples)


def normalized_range(mean, std):
    """(lo, hi) of images in [0, 1] after normalization: the network input's
    range, which data-free activation ranges need (no BN describes it)."""
    return min(-m / s for m, s in zip(mean, std)), max((1 - m) / s for m, s in zip(mean, std))
