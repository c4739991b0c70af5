import pytest
import torch

import models


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("dataset,size,classes", [("cifar10", 32, 10), ("imagenet", 224, 1000)])
def test_output_shapes(arch, dataset, size, classes):
    model = models.build_model(arch, dataset).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, classes)


def test_cifar_variants_keep_resolution_early():
    """CIFAR stems do not downsample: MobileNetV2's last feature map is 4x4,
    ResNet18's layer1 sees 32x32."""
    mobilenet = models.build_model("mobilenetv2", "cifar10").eval()
    resnet = models.build_model("resnet18", "cifar10").eval()
    with torch.no_grad():
        assert mobilenet.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(torch.randn(1, 3, 32, 32)))))
    assert x.shape[-2:] == (32, 32)


def test_module_names_match_imagenet_models():
    for arch in models.ARCHS:
        cifar = {n for n, _ in models.build_model(arch, "cifar10").named_modules()}
        imagenet = {n for n, _ in models.build_model(arch, "imagenet").named_modules()}
        assert cifar == imagenet


def _save(path, arch, dataset="cifar10"):
    model = models.build_model(arch, dataset)
    models.save_checkpoint(path, {"arch": arch, "dataset": dataset, "state_dict": model.state_dict(), "epoch": 3, "top1": 12.5})
    return model


def test_checkpoint_round_trip(tmp_path):
    path = str(tmp_path / "m.pth")
    saved = _save(path, "resnet18")
    loaded = models.load_checkpoint(path, "resnet18", "cifar10")
    assert not loaded.training
    for (k, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed away


def test_checkpoint_of_another_arch(tmp_path):
    path = str(tmp_path / "m.pth")
    _save(path, "mobilenetv2")
    with pytest.raises(models.CheckpointError, match="holds a mobilenetv2 for cifar10, not a resnet18"):
        models.load_checkpoint(path, "resnet18", "cifar10")


def test_checkpoint_with_foreign_weights(tmp_path):
    path = str(tmp_path / "m.pth")
    models.save_checkpoint(path, {"state_dict": models.build_model("mobilenetv2", "cifar10").state_dict()})
    with pytest.raises(models.CheckpointError, match="does not fit a resnet18"):
        models.load_checkpoint(path, "resnet18", "cifar10")


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(models.CheckpointError, match="not found"):
        models.load_checkpoint(str(tmp_path / "none.pth"), "resnet18", "cifar10")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(models.CheckpointError, match="corrupt"):
        models.load_checkpoint(str(bad), "resnet18", "cifar10")


def test_pretrained_weights_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(models.CheckpointError, match="TORCH_HOME"):
        models.build_model("resnet18", "imagenet", pretrained=True)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "m.pth"
    models.save_checkpoint(str(path), {"arch": "resnet18", "epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("interrupted mid-write")

    with pytest.raises(RuntimeError, match="interrupted"):
        models.save_checkpoint(str(path), {"arch": "resnet18", "epoch": 2, "bad": Unpicklable()})
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]
