"""The networks this project quantizes, and their checkpoints.

CIFAR-10 variants are built from torchvision's own classes so that module
names (``features.3.conv.1.0``, ``layer2.0.conv1``) match the ImageNet models
and every script treats both alike.
"""
import os

import torch
import torch.nn as nn
import torchvision

from quant.files import atomic_write

ARCHS = ("mobilenetv2", "resnet18")
DATASETS = ("cifar10", "imagenet")
NUM_CLASSES = {"cifar10": 10, "imagenet": 1000}


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or for another model."""


def cifar_mobilenet_v2(num_classes=10):
    """MobileNetV2 for 32x32 inputs: stride-1 stem and stride-1 first
    downsampling stage, so the last feature map is 4x4 instead of 1x1."""
    setting = [
        # expansion t, channels c, repeats n, stride s
        [1, 16, 1, 1],
        [6, 24, 2, 1],  # stride 2 on ImageNet
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = torchvision.models.MobileNetV2(num_classes=num_classes, inverted_residual_setting=setting)
    model.features[0][0].stride = (1, 1)  # stride 2 on ImageNet
    return model


def cifar_resnet18(num_classes=10):
    """ResNet18 for 32x32 inputs: a 3x3 stride-1 stem and no max-pool."""
    model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(arch, dataset, pretrained=False):
    """Returns an untrained (or, on ImageNet, torchvision-pretrained) model.

    Pretrained ImageNet weights come from the torch hub cache, so setting
    ``TORCH_HOME`` to a folder holding ``hub/checkpoints/<file>.pth`` works
    offline.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "cifar10":
        if pretrained:
            raise ValueError("no pretrained CIFAR-10 weights ship with torchvision; load a checkpoint from ckpt/ instead")
        return cifar_mobilenet_v2() if arch == "mobilenetv2" else cifar_resnet18()
    constructor = {"mobilenetv2": torchvision.models.mobilenet_v2, "resnet18": torchvision.models.resnet18}[arch]
    if not pretrained:
        return constructor(weights=None)
    try:
        return constructor(weights="IMAGENET1K_V1")
    except Exception as err:  # urllib/hub errors vary by platform; all mean "not cached and no network"
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise CheckpointError(
            f"torchvision's ImageNet weights for {arch} are not in {hub} and could not be downloaded "
            f"({type(err).__name__}); set TORCH_HOME to a folder whose hub/checkpoints holds them, or pass --ckpt"
        ) from None


def save_checkpoint(path, payload):
    """Writes ``payload`` with torch.save, atomically: a reader (or a crash)
    never sees a half-written file."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path):
    """Loads a checkpoint dict written by ``train.py``, with clear errors."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; train one with `python train.py --arch ...` or pass --ckpt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}): the file is corrupt or not a torch checkpoint") from None
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        payload = {"state_dict": payload}  # a bare state dict, as torchvision ships its weights
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} holds neither a state dict nor a 'state_dict' entry")
    return payload


def load_checkpoint(path, arch, dataset):
    """Returns the model stored at ``path`` in eval mode, after checking that
    it is an ``arch`` model for ``dataset``."""
    payload = read_checkpoint(path)
    stored = (payload.get("arch"), payload.get("dataset"))
    if stored != (arch, dataset) and None not in stored:
        raise CheckpointError(f"checkpoint {path} holds a {stored[0]} for {stored[1]}, not a {arch} for {dataset}; pass --arch {stored[0]} or another --ckpt")
    model = build_model(arch, dataset)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise CheckpointError(f"checkpoint {path} does not fit a {arch} for {dataset}: its weights have other names or shapes") from None
    return model.eval()


def load_trained(arch, dataset, ckpt=None):
    """The model the scripts evaluate: ``ckpt`` if given, else
    ``ckpt/<arch>_cifar10.pth`` for CIFAR-10 and torchvision's pretrained
    weights for ImageNet. In eval mode."""
    if ckpt is None and dataset == "imagenet":
        return build_model(arch, "imagenet", pretrained=True).eval()
    return load_checkpoint(ckpt or os.path.join("ckpt", f"{arch}_{dataset}.pth"), arch, dataset)
