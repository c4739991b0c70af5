"""Fold BN into the convolutions, equalize, and show what equalization did.

    python weightEqualization.py                       # CIFAR-10 MobileNetV2 from ckpt/
    python weightEqualization.py --arch resnet18 --layer layer1.0.conv1
    python weightEqualization.py --dataset imagenet --absorb --out ckpt/mobilenetv2_imagenet_cle.pt

Prints the largest logit difference against the original model (CLE alone
keeps the function: the difference is float rounding), the spread of
per-channel weight ranges of every equalized layer before and after, and draws
the paper's picture: a box plot per output channel of one layer's weights,
before and after CLE.
"""
import argparse
import copy
import os
import sys

import torch

import loaders
import models
import quant
from quant.channels import output_channel_range

DEFAULT_LAYER = {"mobilenetv2": "features.1.conv.0.0", "resnet18": "layer1.0.conv1"}  # first depthwise / first block conv


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=models.DATASETS, default="cifar10")
    p.add_argument("--arch", choices=models.ARCHS, default="mobilenetv2")
    p.add_argument("--ckpt", help="checkpoint (default: ckpt/<arch>_cifar10.pth; torchvision's weights for ImageNet)")
    p.add_argument("--keep-relu6", action="store_true", help="keep ReLU6: CLE then stops at every ReLU6")
    p.add_argument("--absorb", action="store_true", help="also absorb high biases (changes the function slightly)")
    p.add_argument("--layer", help="layer to draw (default: MobileNetV2's first depthwise conv, ResNet18's layer1.0.conv1)")
    p.add_argument("--plot", default="results/weight_ranges.png", help="where to save the figure")
    p.add_argument("--out", help="save the equalized model here (torch.save of the fx.GraphModule)")
    p.add_argument("--batch", type=int, default=32, help="random inputs for the invariance check")
    return p.parse_args(argv)


def range_spread(weight):
    """max / min and max / median of the per-output-channel ranges."""
    r = output_channel_range(weight)
    return (r.max() / r.min().clamp_min(1e-12)).item(), (r.max() / r.median()).item()


def draw(before, after, layer, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(max(8, before.shape[0] * 0.25), 7), sharex=True)
    for ax, weight, title in zip(axes, (before, after), ("BN folded", "BN folded + CLE")):
        ax.boxplot(weight.reshape(weight.shape[0], -1).T.numpy(), whis=(0, 100), widths=0.6)
        ax.set_title(f"{layer}: {title}")
        ax.set_ylabel("weight")
    axes[1].set_xlabel("output channel")
    ticks = list(range(1, before.shape[0] + 1, max(1, before.shape[0] // 16)))
    axes[1].set_xticks(ticks, [str(t - 1) for t in ticks])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args):
    model = models.load_trained(args.arch, args.dataset, args.ckpt)
    size = 32 if args.dataset == "cifar10" else 224
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    folded = quant.fold_batchnorm(model)
    if not args.keep_relu6:
        quant.replace_relu6(folded)
    gm = copy.deepcopy(folded)
    report = quant.equalize(gm)
    if args.absorb:
        quant.absorb_high_bias(gm)

    with torch.no_grad():
        original, reference, equalized = model(x), folded(x), gm(x)
    print(f"max |logit difference| on {args.batch} random inputs:")
    print(f"  equalized vs original model:              {(equalized - original).abs().max().item():.3g}")
    if not args.keep_relu6 or args.absorb:
        print(f"  equalized vs BN folded{' + ReLU' if not args.keep_relu6 else ''} (CLE{' + absorption' if args.absorb else ''} alone): "
              f"{(equalized - reference).abs().max().item():.3g}")

    print(f"\n{len(report.chains)} chains equalized; per-channel weight range spread, max/min (max/median):")
    print("| layer | before | after |\n|---|---:|---:|")
    for chain in report.chains:
        for name in chain:
            b = range_spread(folded.get_submodule(name).weight)
            a = range_spread(gm.get_submodule(name).weight)
            print(f"| {name} | {b[0]:.1f} ({b[1]:.1f}) | {a[0]:.1f} ({a[1]:.1f}) |")
    print(f"\nnot equalized ({len(report.skipped)}):")
    for s in report.skipped:
        print(f"  {s.layer}: {s.reason}")

    layer = args.layer or DEFAULT_LAYER[args.arch]
    try:
        before, after = folded.get_submodule(layer).weight.detach(), gm.get_submodule(layer).weight.detach()
    except AttributeError:
        raise ValueError(f"no layer {layer!r} in the folded model; pass one of the names above with --layer") from None
    draw(before, after, layer, args.plot)
    print(f"\nfigure: {args.plot}")
    if args.out:
        models.save_checkpoint(args.out, gm)
        print(f"equalized model: {args.out} (torch.load(path, weights_only=False))")


if __name__ == "__main__":
    try:
        main(get_args())
    except (models.CheckpointError, loaders.DataError, quant.TraceError, ValueError) as err:
        sys.exit(f"error: {err}")
