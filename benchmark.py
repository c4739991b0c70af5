"""Speed of each DFQ step, of the fake-quant model against FP32, and of the
int8 model on integer kernels against FP32 and torch.ao's own conversion.

    python benchmark.py                      # MobileNetV2 and ResNet18 at 224x224
    python benchmark.py --threads 2 --repeats 5 --skip-int8

Times are medians over --repeats runs, in seconds, on random weights with
realistic BN statistics (the time does not depend on the values).
"""
import copy
import warnings
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
    p.add_argument("--int8-batch", type=int, default=64, help="batch for int8 throughput")
    p.add_argument("--skip-int8", action="store_true", help="only the DFQ steps and fake-quant evaluation")
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


def torch_ao_reference(model, example, affine_weights=False):
    """torch.ao's post-training conversion (x86 qconfig, FX graph mode),
    calibrated on ``example``: the speed reference for the same kernels.
    Its default weights are per-channel symmetric; ``affine_weights`` gives
    it DFQ's default per-tensor asymmetric weight grid instead, so that both
    conversions ask the kernels for the same work."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping("x86")
    if affine_weights:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
        mapping.set_global(QConfig(activation=get_default_qconfig("x86").activation, weight=weight))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model), mapping, (example,))
        with torch.no_grad():
            prepared(example)
        return convert_fx(prepared)


def int8_speed(model, input_range, args):
    """(latency at batch 1, images/s at --int8-batch) for FP32, DFQ int8 and torch.ao int8."""
    variants = {"FP32": model}
    variants["DFQ int8"], _ = quant.export_int8(quant.dfq(model, input_range=input_range))
    # symmetric weights: no weight zero point for the kernels to correct for, as in torch.ao's default
    variants["DFQ int8, symmetric weights"], _ = quant.export_int8(quant.dfq(model, input_range=input_range, symmetric=True))
    example = torch.randn(8, 3, 224, 224)
    variants["torch.ao int8"] = torch_ao_reference(model, example)
    variants["torch.ao int8, per-tensor asymmetric weights"] = torch_ao_reference(model, example, affine_weights=True)
    one, batch = torch.randn(1, 3, 224, 224), torch.randn(args.int8_batch, 3, 224, 224)
    result = {}
    with torch.inference_mode():
        for name, m in variants.items():
            m(one), m(batch)  # warm-up
            latency = median_time(lambda: m(one), max(args.repeats, 10))
            throughput = args.int8_batch / median_time(lambda: m(batch), args.repeats)
            result[name] = (latency, throughput)
    return result


def main(args):
    torch.set_num_threads(args.threads)
    input_range = loaders.normalized_range(loaders.IMAGENET_MEAN, loaders.IMAGENET_STD)
    rows, speeds = [], {}
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
        if not args.skip_int8:
            speeds[name] = int8_speed(model, input_range, args)

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
    if speeds:
        print(f"\nInteger kernels (x86 backend), {args.threads} threads: latency at batch 1 (ms), "
              f"throughput at batch {args.int8_batch} (images/s), speed-up over FP32\n")
        print("| model | variant | latency (ms) | throughput (img/s) | speed-up |\n|---|---|---:|---:|---:|")
        for name, result in speeds.items():
            base = result["FP32"][1]
            for variant, (latency, throughput) in result.items():
                print(f"| {name} | {variant} | {1000 * latency:.1f} | {throughput:.1f} | {throughput / base:.2f}x |")


if __name__ == "__main__":
    main(get_args())

