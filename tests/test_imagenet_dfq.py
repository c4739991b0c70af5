"""DFQ on real weights and real images: torchvision's MobileNetV2 on the
ImageNet validation subset. Skips only where the shared data is absent."""
import pytest
import torch

import loaders
import models
import quant


@torch.inference_mode()
def logits_of(model, images, batch_size=100):
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def sqnr_db(logits, reference):
    return 10 * torch.log10(reference.pow(2).sum() / (logits - reference).pow(2).sum()).item()


@pytest.fixture(scope="module")
def mobilenet_v2(torch_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", torch_home)
        return models.build_model("mobilenetv2", "imagenet", pretrained=True).eval()


def test_dfq_beats_naive_per_tensor_w8a8_without_data(mobilenet_v2, imagenet_subset):
    images, labels = imagenet_subset
    input_range = loaders.normalized_range(loaders.IMAGENET_MEAN, loaders.IMAGENET_STD)
    fp32 = logits_of(mobilenet_v2, images)
    naive = logits_of(quant.quantize(quant.fold_batchnorm(mobilenet_v2), w_bits=8, a_bits=8, input_range=input_range), images)
    dfq = logits_of(quant.dfq(mobilenet_v2, w_bits=8, a_bits=8, input_range=input_range), images)

    top1 = {name: (l.argmax(1) == labels).float().mean().item() * 100 for name, l in (("fp32", fp32), ("naive", naive), ("dfq", dfq))}
    agree = {name: (l.argmax(1) == fp32.argmax(1)).float().mean().item() * 100 for name, l in (("naive", naive), ("dfq", dfq))}
    print(f"top-1 {top1}, agreement with FP32 {agree}")
    assert top1["fp32"] > 75  # the right weights and preprocessing
    assert agree["naive"] <= 98.0, "naive W8A8 changes almost nothing: something was not quantized"
    assert agree["dfq"] > agree["naive"]
    assert sqnr_db(dfq, fp32) > sqnr_db(naive, fp32)
    assert top1["dfq"] >= top1["fp32"] - 1.5
