"""Train a CIFAR-10 MobileNetV2 or ResNet18; keep the best model in ckpt/.

    python train.py --arch resnet18 --epochs 18
    python train.py --arch resnet18 --epochs 18 --resume   # after an interruption
    torchrun --nproc_per_node 4 train.py --arch mobilenetv2  # several GPUs

Writes, under --out-dir:
    <arch>_cifar10.pth        best test accuracy so far: weights + metadata
    <arch>_cifar10_last.pth   last finished epoch, with optimizer and scheduler
                              state, which --resume continues from
    <arch>_cifar10_log.jsonl  one line of metrics per epoch
Every checkpoint is written to a temporary file and renamed into place.

With --swa (stochastic weight averaging, Izmailov et al. 2018) the weights
are averaged at the end of every epoch; that average, with its BN statistics
re-estimated on training images, is what gets evaluated and kept:
    python train.py --arch resnet18 --epochs 4 --lr 0.02 --schedule constant --warmup-epochs 0 --swa --init ckpt/resnet18_cifar10.pth
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import loaders
import models
from quant.files import atomic_write


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=models.ARCHS, default="mobilenetv2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256, help="per process")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate (SGD, Nesterov momentum 0.9)")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="cosine: linear warm-up then cosine decay to 0; step: x0.1 at 50%% and 75%% of training; "
                        "constant: --lr after warm-up (the usual choice with --swa; --resume may raise --epochs)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=0, help="intra-op threads for the CPU (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="data/cifar10", help="CIFAR-10 root: train/ and test/ class folders, or torchvision's cifar-10-batches-py")
    p.add_argument("--out-dir", default="ckpt")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/<arch>_cifar10_last.pth if it exists")
    p.add_argument("--init", metavar="CKPT",
                   help="start from this trained checkpoint's weights instead of random ones: a new cosine cycle "
                        "(warm restart) that keeps the best model only where it beats CKPT's test accuracy")
    p.add_argument("--swa", action="store_true",
                   help="average the weights at the end of every epoch and evaluate and keep that average")
    p.add_argument("--swa-bn-images", type=int, default=10000,
                   help="training images that re-estimate the averaged model's BN statistics")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="end this run after N epochs (the schedule still spans --epochs; continue with --resume)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true", help="train in float32 (default: bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX), "
                        "fp16/bf16 AMP on CUDA)")
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images (smoke tests)")
    return p.parse_args(argv)


# Hyperparameters that define a run; --resume keeps the stored ones.
RUN_DEFINING = ("arch", "epochs", "batch_size", "lr", "schedule", "warmup_epochs", "weight_decay", "label_smoothing", "seed",
                "limit_train", "init", "swa", "swa_bn_images")


def lr_factor(step, steps_per_epoch, args):
    epoch = step / steps_per_epoch
    if epoch < args.warmup_epochs:
        return (step + 1) / (args.warmup_epochs * steps_per_epoch)
    if args.schedule == "constant":
        return 1.0
    if args.schedule == "step":
        return 0.1 ** sum(epoch >= f * args.epochs for f in (0.5, 0.75))
    progress = (epoch - args.warmup_epochs) / max(args.epochs - args.warmup_epochs, 1e-8)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def amp_enabled(device, no_amp):
    """bf16 autocast pays on a CPU only where it has bf16 instructions;
    elsewhere oneDNN emulates bf16 and an epoch takes over ten times as long
    as float32."""
    if no_amp:
        return False
    return device.type != "cpu" or torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device, enabled):
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model, data, device, amp, batch_size=500):
    model.eval()
    correct = 0
    for x, y in data.batches(batch_size):
        x = x.to(device, memory_format=torch.channels_last)
        with autocast(device, amp):
            correct += (model(x).argmax(1).cpu() == y).sum().item()
    return 100.0 * correct / len(data)


@torch.no_grad()
def update_batchnorm(model, data, device, amp, images, batch_size, generator):
    """Re-estimates every BN layer's running mean and variance as a plain
    average over ``images`` augmented training images. An average of weights
    needs its own statistics: those of the averaged models do not describe
    its activations."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    model.train()
    order = torch.randperm(len(data), generator=generator)[:images]
    for x, _ in data.batches(batch_size, order, augment=True, generator=generator):
        with autocast(device, amp):
            model(x.to(device, memory_format=torch.channels_last))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def train_one_epoch(model, data, optimizer, scheduler, criterion, epoch, args, device, amp, rank, world):
    model.train()
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    sampler = torch.utils.data.DistributedSampler(range(len(data)), num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    steps = math.ceil(len(order) / args.batch_size)
    loss_sum = correct = seen = 0
    bar = tqdm(data.batches(args.batch_size, order, augment=True, generator=generator), total=steps,
               desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False)
    for x, y in bar:
        x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
        with autocast(device, amp):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
    return loss_sum / seen, 100.0 * correct / seen


def main(args):
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local}"
            torch.cuda.set_device(local)
    device = torch.device(args.device)
    amp = amp_enabled(device, args.no_amp)
    if not args.no_amp and not amp and rank == 0:
        print("this CPU has no bf16 instructions: training in float32")
    if args.workers:
        torch.set_num_threads(args.workers)

    best_path = os.path.join(args.out_dir, f"{args.arch}_cifar10.pth")
    last_path = os.path.join(args.out_dir, f"{args.arch}_cifar10_last.pth")
    log_path = os.path.join(args.out_dir, f"{args.arch}_cifar10_log.jsonl")

    resumed = read_resume_state(last_path, args, rank)
    start = models.read_checkpoint(args.init) if args.init and resumed is None else None

    torch.manual_seed(args.seed)
    train_set = loaders.load_cifar10(args.data, "train")
    test_set = loaders.load_cifar10(args.data, "test")
    if args.limit_train:
        train_set = train_set.subset(torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[:args.limit_train])

    model = models.build_model(args.arch, "cifar10").to(device, memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(train_set) / world / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, args))
    start_epoch, best_top1, cycle = 0, -1.0, 1
    if start is not None:
        model.load_state_dict(models.load_checkpoint(args.init, args.arch, "cifar10").state_dict())
        best_top1, cycle = start.get("top1", -1.0), start.get("cycle", 1) + 1
        if rank == 0:
            print(f"cycle {cycle} from {args.init} (test top-1 {best_top1:.2f}%): "
                  f"a new best model is kept only where it beats that")
    averaged = torch.optim.swa_utils.AveragedModel(model) if args.swa else None
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        if averaged is not None:
            averaged.load_state_dict(resumed["averaged"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        start_epoch, best_top1, cycle = resumed["epoch"], resumed["best_top1"], resumed.get("cycle", 1)
        if rank == 0:
            print(f"resumed from {last_path}: {start_epoch} of {args.epochs} epochs done, best test top-1 {best_top1:.2f}%")
            _truncate_log(log_path, cycle, start_epoch)
    elif rank == 0:
        _truncate_log(log_path, cycle, 0)  # a fresh run starts a fresh log; a new cycle adds to it
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    meta = {"arch": args.arch, "dataset": "cifar10", "cycle": cycle, "args": vars(args), "torch_version": str(torch.__version__)}
    end_epoch = min(args.epochs, start_epoch + args.stop_after) if args.stop_after else args.epochs
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        loss, train_top1 = train_one_epoch(net, train_set, optimizer, scheduler, criterion, epoch, args, device, amp, rank, world)
        if rank != 0:
            continue
        evaluated = model
        if averaged is not None:
            averaged.update_parameters(model)
            update_batchnorm(averaged.module, train_set, device, amp, args.swa_bn_images, args.batch_size,
                             torch.Generator().manual_seed(args.seed * 1000 + epoch))
            evaluated = averaged.module
        test_top1 = evaluate(evaluated, test_set, device, amp)
        weights = cpu_state(model)
        if test_top1 > best_top1:
            best_top1 = test_top1
            best_weights = weights if evaluated is model else cpu_state(evaluated)
            models.save_checkpoint(best_path, {**meta, "state_dict": best_weights, "epoch": epoch + 1, "top1": test_top1})
        last = {**meta, "state_dict": weights, "epoch": epoch + 1, "top1": test_top1, "best_top1": best_top1,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if averaged is not None:
            last["averaged"] = averaged.state_dict()
        models.save_checkpoint(last_path, last)
        row = {"cycle": cycle, "epoch": epoch + 1, "train_loss": round(loss, 4), "train_top1": round(train_top1, 2), "test_top1": round(test_top1, 2),
               "best_top1": round(best_top1, 2), "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
        if averaged is not None:
            row["swa_models"] = int(averaged.n_averaged)
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss:.3f}  train {train_top1:.2f}%  test {test_top1:.2f}%  best {best_top1:.2f}%  ({row['seconds']:.0f} s)", flush=True)
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        done = "" if end_epoch == args.epochs else f" (stopped after epoch {end_epoch} of {args.epochs}; continue with --resume)"
        kept = best_path if start is None or best_top1 > start.get("top1", -1.0) else f"no epoch beat {args.init}"
        print(f"best test top-1 {best_top1:.2f}% -> {kept}{done}")


def cpu_state(model):
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def read_resume_state(last_path, args, rank):
    """The last-epoch checkpoint to continue from under --resume, with the
    stored run-defining flags put back into ``args``; None for a new run.
    With --init, a last checkpoint of another run (the cycle before) is not
    continued: this run starts from CKPT instead."""
    if not args.resume or not os.path.exists(last_path):
        if args.resume and rank == 0:
            print(f"no {last_path} yet: starting from epoch 1")
        return None
    resumed = models.read_checkpoint(last_path)
    stored = resumed["args"]
    if args.init and stored.get("init") != args.init:
        return None
    # Under a constant learning rate no step depends on the length of the run,
    # so --epochs may lengthen it (more models in the --swa average).
    defining = [k for k in RUN_DEFINING if not (k == "epochs" and stored.get("schedule") == "constant")]
    changed = [k for k in defining if getattr(args, k) != stored.get(k)]
    if changed and rank == 0:
        print(f"resuming with the stored {', '.join(changed)} (flags given now are ignored for these)")
    for k in defining:
        setattr(args, k, stored.get(k))
    return resumed


def _truncate_log(log_path, cycle, epochs_done):
    """Keeps the log lines of earlier cycles and of this cycle's epochs up to
    the checkpoint (drops those of a run cut off mid-write)."""
    if not os.path.exists(log_path):
        return
    with open(log_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in rows if r.get("cycle", 1) < cycle or (r.get("cycle", 1) == cycle and r["epoch"] <= epochs_done)]

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    atomic_write(log_path, write)


if __name__ == "__main__":
    args = get_args()
    try:
        main(args)
    except (models.CheckpointError, loaders.DataError) as err:
        sys.exit(f"error: {err}")
