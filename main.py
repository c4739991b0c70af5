"""Quantize a trained CNN without data (DFQ) and measure what each step buys.

    python main.py                                   # the ablation on CIFAR-10 MobileNetV2 from ckpt/
    python main.py --arch resnet18 --ablation
    python main.py --dataset imagenet --data val_folder --ablation --json results/imagenet.json
    python main.py --w-bits 6 --no-absorb            # one configuration against FP32

Every row starts from the same FP32 model and is evaluated on the same images.
Quantization is fake (float kernels, values on the integer grid): per-tensor
asymmetric weights and activations unless --per-channel / --symmetric, biases
32-bit unless --bias-bits, data-free activation ranges unless --act-range calib.
"""
import argparse
import json
import os
import sys
import tarfile
import tempfile
import time

import torch
from tqdm import tqdm

import loaders
import models
import quant

CIFAR_ROOT = "data/cifar10"
CIFAR_TEST_ARCHIVE = "data/cifar10-test.tar.gz"  # the CIFAR-10 test split, shipped so that `python main.py` runs anywhere
EVAL_IN_MEMORY = 10_000  # images: evaluation sets up to this size are decoded once and kept


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=models.DATASETS, default="cifar10")
    p.add_argument("--arch", choices=models.ARCHS, default="mobilenetv2")
    p.add_argument("--ckpt", help="checkpoint (default: ckpt/<arch>_cifar10.pth; torchvision's weights for ImageNet)")
    p.add_argument("--data", help=f"CIFAR-10 root (default {CIFAR_ROOT}) or ImageNet class-folder validation set")
    p.add_argument("--synsets", help="ImageNet: the 1,000 wnids in order (default: <data>/synset_words.txt)")
    q = p.add_argument_group("quantization")
    q.add_argument("--w-bits", type=int, default=8)
    q.add_argument("--a-bits", type=int, default=8)
    q.add_argument("--bias-bits", type=int, default=32)
    q.add_argument("--per-channel", action="store_true", help="one weight scale per output channel (default: per tensor)")
    q.add_argument("--symmetric", action="store_true", help="symmetric grids (default: asymmetric with an exact zero)")
    q.add_argument("--act-range", choices=("bn", "calib"), default="bn", help="bn: data-free, from the BN statistics; calib: min/max on images")
    q.add_argument("--n-std", type=float, default=quant.DEFAULT_N_STD, help="act-range bn: beta +- n |gamma|")
    q.add_argument("--calib-images", type=int, default=256, help="images for --act-range calib and empirical bias correction")
    s = p.add_argument_group("DFQ steps (all on by default)")
    s.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers (needs --act-range calib)")
    s.add_argument("--keep-relu6", action="store_true", help="do not replace ReLU6 with ReLU")
    s.add_argument("--no-cle", action="store_true", help="no cross-layer equalization")
    s.add_argument("--no-absorb", action="store_true", help="no high-bias absorption")
    s.add_argument("--bias-correction", choices=("none", "analytic", "empirical"), default="analytic")
    r = p.add_argument_group("run")
    r.add_argument("--ablation", action="store_true", help="the paper's ablation table (the default when main.py gets no arguments)")
    r.add_argument("--int8", action="store_true", help="also run the quantized model (DFQ's in the ablation) on real int8 kernels")
    r.add_argument("--save-int8", metavar="PATH", help="save that int8 model as TorchScript (implies --int8)")
    r.add_argument("--batch-size", type=int, default=100)
    r.add_argument("--workers", type=int, default=2, help="image decoding processes (ImageNet)")
    r.add_argument("--limit", type=int, default=0, help="evaluate on N images only, drawn at random (fixed by --seed)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", help="also write the results here (default: results/<dataset>_<arch>.json)")
    args = p.parse_args(argv)
    if argv is None and len(sys.argv) == 1:
        args.ablation = True
    args.int8 = args.int8 or bool(args.save_int8)
    return args


INT8_ROW = "W8A8 DFQ (+ bias correction)"


def ablation_rows(args):
    """The rows of the paper's table: (name, variant settings)."""
    w8 = {"w_bits": 8, "a_bits": 8}
    dfq = {"relu6": True, "cle": True, "absorb": True, "bias_correction": "analytic"}
    return [
        ("FP32", {"fold": False, "quantize": False}),
        ("FP32, BN folded", {"quantize": False}),
        ("FP32, BN folded, ReLU6->ReLU, CLE, absorption", {**dfq, "bias_correction": None, "quantize": False}),
        ("W8A8 naive (BN folded)", w8),
        ("W8A8 + ReLU6->ReLU", {**w8, "relu6": True}),
        ("W8A8 + CLE", {**w8, "relu6": True, "cle": True}),
        ("W8A8 + CLE + absorption", {**w8, "relu6": True, "cle": True, "absorb": True}),
        (INT8_ROW, {**w8, **dfq}),
        ("W8A8 bias correction alone", {**w8, "bias_correction": "analytic"}),
        ("W8A8 per-channel, no CLE", {**w8, "per_channel": True}),
        ("W6A8 DFQ", {"w_bits": 6, "a_bits": 8, **dfq}),
        ("W4A8 DFQ", {"w_bits": 4, "a_bits": 8, **dfq}),
    ]


def single_rows(args):
    settings = {"fold": not args.no_fold, "relu6": not args.keep_relu6, "cle": not args.no_cle, "absorb": not args.no_absorb,
                "bias_correction": None if args.bias_correction == "none" else args.bias_correction,
                "w_bits": args.w_bits, "a_bits": args.a_bits, "per_channel": args.per_channel}
    labels = {"relu6": "ReLU6->ReLU", "cle": "CLE", "absorb": "absorption"}
    steps = [labels[k] for k in labels if settings[k]] + ([f"{args.bias_correction} bias correction"] if settings["bias_correction"] else [])
    name = f"W{args.w_bits}A{args.a_bits} {'per-channel' if args.per_channel else 'per-tensor'}" + (f" + {', '.join(steps)}" if steps else "")
    return [("FP32", {"fold": False, "quantize": False}), (name, settings)]


def build_variant(model, args, calib, fold=True, relu6=False, cle=False, absorb=False, bias_correction=None,
                  quantize=True, w_bits=8, a_bits=8, per_channel=False):
    """One row's model: the DFQ steps in the paper's order, on a copy of ``model``."""
    if not fold:
        if not quantize:
            return model
        if args.act_range == "bn":
            raise ValueError("without BN folding there are no folded BN statistics: add --act-range calib")
    gm = quant.fold_batchnorm(model) if fold else quant.trace(model)
    if relu6:
        quant.replace_relu6(gm)
    if cle:
        quant.equalize(gm)
    if absorb:
        quant.absorb_high_bias(gm)
    if not quantize:
        return gm
    qm = quant.quantize(gm, w_bits=w_bits, a_bits=a_bits, per_channel=per_channel, symmetric=args.symmetric,
                        bias_bits=args.bias_bits, act_range=args.act_range, n_std=args.n_std,
                        input_range=args.input_range, calib_data=calib() if args.act_range == "calib" else None)
    if bias_correction:
        quant.correct_bias(qm, gm, data=calib() if bias_correction == "empirical" else None)
    return qm


# ---------------------------------------------------------------- data


def cifar_root(args):
    root = args.data or CIFAR_ROOT
    if args.data is None and not loaders.is_cifar_image_folder(root, ("test",)) and os.path.exists(CIFAR_TEST_ARCHIVE):
        unpack(CIFAR_TEST_ARCHIVE, root)
    return root


def unpack(archive, root):
    """Unpacks the shipped test split into ``root``, via a temporary folder
    renamed into place: an interrupted run leaves no half-unpacked split."""
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(os.path.join(tmp, "test"), os.path.join(root, "test"))


def evaluation_batches(args):
    """The evaluation images as a list of (x, y) batches in memory, or, for
    sets larger than EVAL_IN_MEMORY, a DataLoader read again for each row."""
    if args.dataset == "cifar10":
        data = loaders.load_cifar10(cifar_root(args), "test")
        if args.limit:
            data = data.subset(sample(len(data), args.limit, args.seed))
        return list(data.batches(args.batch_size)), len(data)
    dataset = loaders.imagenet_dataset(args.data, args.synsets)
    if args.limit:
        dataset = torch.utils.data.Subset(dataset, sample(len(dataset), args.limit, args.seed).tolist())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    if len(dataset) > EVAL_IN_MEMORY:
        return loader, len(dataset)
    return list(tqdm(loader, desc="decoding images", leave=False)), len(dataset)


def sample(n, k, seed):
    """k of range(n) at random, in order: the folders are sorted by class."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def calibration_images(args):
    """Images for calibration and empirical bias correction: CIFAR-10's
    training split, or the first images of the ImageNet folder."""
    if args.dataset == "cifar10":
        train = loaders.load_cifar10(cifar_root(args), "train")
        return next(train.subset(sample(len(train), args.calib_images, args.seed)).batches(args.calib_images))[0]
    dataset = loaders.imagenet_dataset(args.data, args.synsets)
    print(f"note: calibrating on the first {args.calib_images} evaluation images (no separate ImageNet split given)")
    return torch.stack([dataset[i][0] for i in range(min(args.calib_images, len(dataset)))])


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def predictions(model, batches, device, desc):
    model.eval().to(device)
    preds, labels = [], []
    for x, y in tqdm(batches, desc=desc, leave=False):
        preds.append(model(x.to(device)).argmax(1).cpu())
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def first_batch(batches):
    return next(iter(batches))[0]


def export_int8(qm, args, check):
    """The fake-quant model on torch's integer kernels (CPU only)."""
    int8, report = quant.export_int8(qm.cpu(), check=check)
    kept = ", ".join(f"{name} ({why})" for name, why in report.float)
    tqdm.write(f"int8: {len(report.integer)} ops on integer kernels; in float: {kept or 'none'}")
    if args.save_int8:
        quant.save_int8(int8, args.save_int8)
        tqdm.write(f"int8 model saved to {args.save_int8} (torch.jit.load)")
    if args.device != "cpu":
        tqdm.write("note: the int8 model runs on the CPU")
        args.device = "cpu"
    return int8


def markdown_table(rows):
    lines = ["| row | top-1 (%) | vs FP32 | agrees with FP32 (%) | time (s) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['top1']:.2f} | {r['top1'] - rows[0]['top1']:+.2f} | {r['agreement']:.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(args):
    torch.manual_seed(args.seed)
    if args.dataset == "imagenet" and not args.data:
        raise loaders.DataError("ImageNet needs --data: a class-folder validation set (make one with imagenet_format.py)")
    stats = (loaders.CIFAR10_MEAN, loaders.CIFAR10_STD) if args.dataset == "cifar10" else (loaders.IMAGENET_MEAN, loaders.IMAGENET_STD)
    args.input_range = loaders.normalized_range(*stats)
    model = models.load_trained(args.arch, args.dataset, args.ckpt)
    batches, count = evaluation_batches(args)
    calib_cache = []

    def calib():
        if not calib_cache:
            calib_cache.append(calibration_images(args))
        return calib_cache[0]

    rows, reference = [], None
    plan = ablation_rows(args) if args.ablation else single_rows(args)
    int8_of = INT8_ROW if args.ablation else plan[-1][0]

    def add_row(name, variant, settings, t0):
        nonlocal reference
        preds, labels = predictions(variant, batches, args.device, name)
        reference = preds if reference is None else reference
        rows.append({"name": name, "top1": 100.0 * (preds == labels).float().mean().item(),
                     "agreement": 100.0 * (preds == reference).float().mean().item(),
                     "seconds": time.time() - t0, "settings": settings})
        tqdm.write(f"{name}: top-1 {rows[-1]['top1']:.2f}%")

    for name, settings in tqdm(plan, desc="rows"):
        t0 = time.time()
        variant = build_variant(model, args, calib, **settings)
        add_row(name, variant, settings, t0)
        if args.int8 and name == int8_of:
            t0 = time.time()
            try:
                int8 = export_int8(variant, args, first_batch(batches))
            except quant.ExportError as err:
                tqdm.write(f"int8: not exported: {err}")
                continue
            add_row(f"{name}, int8 kernels", int8, {**settings, "int8": True}, t0)

    print(f"\n{args.arch} on {args.dataset} ({count} images; {args.act_range} activation ranges, "
          f"{'per-channel' if args.per_channel else 'per-tensor'} {'symmetric' if args.symmetric else 'asymmetric'}, "
          f"{args.bias_bits}-bit bias)\n")
    print(markdown_table(rows))
    out = args.json or os.path.join("results", f"{args.dataset}_{args.arch}.json")
    write_json(out, {"rows": rows, "images": count, "args": {k: v for k, v in vars(args).items() if k != "input_range"}})
    print(f"\nwritten to {out}")


def write_json(path, payload):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)

    quant.atomic_write(path, write)


if __name__ == "__main__":
    try:
        main(get_args())
    except (models.CheckpointError, loaders.DataError, quant.TraceError, quant.ExportError, ValueError) as err:
        sys.exit(f"error: {err}")
