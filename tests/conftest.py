import os
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def shared_data():
    """The read-only folder of real data and weights: $DFQ_SHARED_DATA, else
    ../shared/data beside the repository."""
    return os.environ.get("DFQ_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")


def with_realistic_bn(model, shape=(8, 3, 32, 32), batches=3, seed=0):
    """Gives every BatchNorm running statistics of real activations (a few
    train-mode batches of N(0, 1) inputs) and non-trivial affine parameters,
    so that folding bugs cannot hide behind mean 0, var 1, gamma 1, beta 0."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen).mul_(torch.where(torch.rand(m.num_features, generator=gen) < 0.1, -1.0, 1.0))
                m.bias.normal_(0.0, 0.5, generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape, generator=gen))
    return model.eval()


def relative_error(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def imagenet_subset(tmp_path_factory):
    """(images, labels) of the real ImageNet validation subset, preprocessed
    (resize 256, center crop 224, normalized); skips where it is absent."""
    import loaders

    folder = os.path.join(shared_data(), "imagenet")
    tar = os.path.join(folder, "ILSVRC2012_img_val_subset.tar")
    if not os.path.exists(tar):
        pytest.skip(f"ImageNet subset not found under {folder}")
    out = tmp_path_factory.mktemp("imagenet")
    with tarfile.open(tar) as f:
        f.extractall(out, filter="data")
    index = {w: i for i, w in enumerate(loaders.read_wnids(os.path.join(folder, "synset_words.txt")))}
    with open(os.path.join(folder, "val_subset_labels.txt")) as f:
        samples = [(str(out / name), index[wnid]) for name, wnid in (line.split() for line in f if line.strip())]
    data = torch.utils.data.DataLoader(loaders.ImageFiles(samples), batch_size=100, num_workers=2)
    xs, ys = zip(*data)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="session")
def torch_home():
    home = os.path.join(shared_data(), "torch")
    if not os.path.exists(os.path.join(home, "hub", "checkpoints", "mobilenet_v2-b0353104.pth")):
        pytest.skip(f"torchvision MobileNetV2 weights not found under {home}")
    return home
