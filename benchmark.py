"""Speed of each DFQ step, and of the fake-quant model against FP32.

    python benchmark.py                      # MobileNetV2 and ResNet18 at 224x224
    python benchmark.py --threads 2 --batch-size 32 --repeats 5

Times are medians over --repeats runs, in seconds, on random weights with
realistic BN statistics (the time does not depend on the values).
"""
import argparse
import statistics
import time

import torch
import torchvision

import loaders
import quant


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"], choices=["mobilenet_v2", "resnet18"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch")
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dfq_steps(model, input_range):
    """Each step of the pipeline as a thunk, run in order on fresh state."""
    state = {}
    return [
        ("fold_batchnorm", lambda: state.__setitem__("gm", quant.fold_batchnorm(model))),
        ("replace_relu6", lambda: quant.replace_relu6(state["gm"])),
        ("equalize", lambda: quant.equalize(state["gm"])),
        ("absorb_high_bias", lambda: quant.absorb_high_bias(state["gm"])),
        ("quantize", lambda: state.__setitem__("qm", quant.quantize(state["gm"], input_range=input_range))),
        ("correct_bias", lambda: quant.correct_bias(state["qm"], state["gm"])),
    ]


def main(args):
    torch.set_num_threads(args.threads)
    input_range = loaders.normalized_range(loaders.IMAGENET_MEAN, loaders.IMAGENET_STD)
    rows = []
    for name in args.models:
        model = getattr(torchvision.models, name)().train()
        with torch.no_grad():
            model(torch.randn(8, 3, 224, 224))  # BN statistics of real activations
        model.eval()
        steps = {}
        for _ in range(args.repeats):
            for step, fn in dfq_steps(model, input_range):
                t0 = time.perf_counter()
                fn()
                steps.setdefault(step, []).append(time.perf_counter() - t0)
        whole = median_time(lambda: quant.dfq(model, input_range=input_range), args.repeats)
        qm = quant.dfq(model, input_range=input_range)
        x = torch.randn(args.batch_size, 3, 224, 224)
        with torch.inference_mode():
            model(x), qm(x)  # warm-up
            fp32 = median_time(lambda: model(x), args.repeats)
            fake = median_time(lambda: qm(x), args.repeats)
        rows.append((name, {k: statistics.median(v) for k, v in steps.items()}, whole, fp32, fake))

    print(f"\nDFQ step times (s), median of {args.repeats}, {args.threads} threads\n")
    step_names = list(rows[0][1])
    print("| model | " + " | ".join(step_names) + " | dfq() |")
    print("|---" * (len(step_names) + 2) + "|")
    for name, steps, whole, _, _ in rows:
        print(f"| {name} | " + " | ".join(f"{steps[s]:.3f}" for s in step_names) + f" | {whole:.3f} |")
    print(f"\nEvaluation, batch {args.batch_size} at 224x224 (s per batch)\n")
    print("| model | FP32 | fake-quant W8A8 | ratio |\n|---|---|---|---|")
    for name, _, _, fp32, fake in rows:
        print(f"| {name} | {fp32:.3f} | {fake:.3f} | {fake / fp32:.2f}x |")


if __name__ == "__main__":
    main(get_args())
