"""main.py, weightEqualization.py and imagenet_format.py, run as a user runs them."""
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import imagenet_format
import models
from conftest import ROOT, with_realistic_bn
from test_data import make_cifar_folder


def run(script, *flags, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, flags)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """A tiny CIFAR-10 folder and a resnet18 checkpoint with realistic BN statistics."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_cifar_folder(str(root / "data"), per_class=(6, 10))
    torch.manual_seed(0)
    model = with_realistic_bn(models.build_model("resnet18", "cifar10"), (16, 3, 32, 32))
    ckpt = str(root / "resnet18.pth")
    models.save_checkpoint(ckpt, {"arch": "resnet18", "dataset": "cifar10", "state_dict": model.state_dict()})
    return data, ckpt, root


def test_main_ablation_end_to_end(tiny_cifar):
    data, ckpt, root = tiny_cifar
    out = root / "ablation.json"
    result = run("main.py", "--arch", "resnet18", "--ckpt", ckpt, "--data", data, "--ablation", "--json", out, "--batch-size", 8)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows)[0] == "FP32" and len(rows) == 12
    for name in ("FP32, BN folded", "W8A8 naive (BN folded)", "W8A8 + CLE", "W8A8 + CLE + absorption", "W8A8 DFQ (+ bias correction)",
                 "W8A8 bias correction alone", "W8A8 per-channel, no CLE", "W6A8 DFQ", "W4A8 DFQ"):
        assert name in rows
    # BN folding is exact, and ResNet18 has no ReLU6 to replace
    assert rows["FP32, BN folded"]["agreement"] == 100.0
    assert rows["W8A8 + ReLU6->ReLU"]["top1"] == rows["W8A8 naive (BN folded)"]["top1"]
    assert rows["W8A8 + ReLU6->ReLU"]["agreement"] == rows["W8A8 naive (BN folded)"]["agreement"]
    assert "| FP32 | " in result.stdout  # the Markdown table


def test_main_single_configuration_and_errors(tiny_cifar):
    data, ckpt, root = tiny_cifar
    out = root / "single.json"
    result = run("main.py", "--arch", "resnet18", "--ckpt", ckpt, "--data", data, "--w-bits", 6, "--no-absorb", "--json", out)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["FP32", "W6A8 per-tensor + ReLU6->ReLU, CLE, analytic bias correction"]

    wrong_arch = run("main.py", "--arch", "mobilenetv2", "--ckpt", ckpt, "--data", data)
    assert wrong_arch.returncode != 0 and "holds a resnet18" in wrong_arch.stderr and "Traceback" not in wrong_arch.stderr
    no_data = run("main.py", "--arch", "resnet18", "--ckpt", ckpt, "--data", root / "missing")
    assert no_data.returncode != 0 and "--data" in no_data.stderr and "Traceback" not in no_data.stderr
    no_ckpt = run("main.py", "--arch", "resnet18", "--ckpt", root / "none.pth", "--data", data)
    assert no_ckpt.returncode != 0 and "not found" in no_ckpt.stderr


def test_weight_equalization_script(tiny_cifar):
    _, ckpt, root = tiny_cifar
    plot, out = root / "ranges.png", root / "equalized.pt"
    result = run("weightEqualization.py", "--arch", "resnet18", "--ckpt", ckpt, "--plot", plot, "--out", out, "--batch", 4)
    assert result.returncode == 0, result.stderr
    difference = float(result.stdout.split("equalized vs original model:")[1].split()[0])
    assert difference < 1e-4  # CLE alone keeps the function
    assert "| layer1.0.conv1 |" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    gm = torch.load(out, weights_only=False)
    x = torch.randn(2, 3, 32, 32)
    model = models.load_checkpoint(ckpt, "resnet18", "cifar10")
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-4)


# ---------------------------------------------------------------- imagenet_format.py

WNIDS = ["n01000001", "n01000002", "n01000003"]


def make_val_tar(path, count):
    folder = path.parent / "jpegs"
    folder.mkdir(exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(1, count + 1):
            name = f"ILSVRC2012_val_{i:08d}.JPEG"
            Image.fromarray(np.full((40, 50, 3), 10 * i, dtype=np.uint8)).save(folder / name)
            tar.add(folder / name, arcname=name)
    return path


def make_devkit(path, truth):
    """A devkit with meta.mat (three leaf synsets and one parent) and a ground-truth file."""
    records = [(1, WNIDS[2], "third", 0), (2, WNIDS[0], "first", 0), (3, WNIDS[1], "second", 0), (1001, "n00000001", "parent", 3)]
    synsets = np.zeros(len(records), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    for i, r in enumerate(records):
        synsets[i] = r
    data = path.parent / "devkit_src" / "data"
    data.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(data.parent, arcname="ILSVRC2012_devkit_t12")
    return path


def format_args(**kw):
    return imagenet_format.get_args([f"--{k.replace('_', '-')}={v}" if v is not True else f"--{k}" for k, v in kw.items()])


def test_imagenet_format_with_devkit(tmp_path):
    val = make_val_tar(tmp_path / "val.tar", 5)
    devkit = make_devkit(tmp_path / "devkit.tar.gz", [1, 2, 2, 3, 1])
    out = tmp_path / "out"
    for _ in range(2):  # safe to run twice
        counts = imagenet_format.main(format_args(val=val, devkit=devkit, out=out, synsets=tmp_path / "none.txt"))
        assert counts == {WNIDS[2]: 2, WNIDS[0]: 2, WNIDS[1]: 1}
        assert sorted(os.listdir(out / WNIDS[2])) == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000005.JPEG"]
    # the 1,000-class index order is the sorted wnids: the loader can use the folder directly
    assert (out / "synset_words.txt").read_text().split("\n")[0] == f"{WNIDS[0]} first"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".imagenet_format")]


def test_imagenet_format_refuses_mismatches(tmp_path):
    val = make_val_tar(tmp_path / "val.tar", 3)
    out = tmp_path / "out"
    longer = make_devkit(tmp_path / "devkit.tar.gz", [1, 2, 3, 1])
    with pytest.raises(imagenet_format.FormatError, match="label without an image"):
        imagenet_format.main(format_args(val=val, devkit=longer, out=out))
    assert imagenet_format.main(format_args(val=val, devkit=longer, out=out, partial=True)) == {WNIDS[2]: 1, WNIDS[0]: 1, WNIDS[1]: 1}
    shorter = make_devkit(tmp_path / "short.tar.gz", [1, 2])
    with pytest.raises(imagenet_format.FormatError, match="has no label"):
        imagenet_format.main(format_args(val=val, devkit=shorter, out=tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()  # nothing written


def test_imagenet_format_with_label_file(tmp_path):
    val = make_val_tar(tmp_path / "val.tar", 3)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("".join(f"{w} name {i}\n" for i, w in enumerate(WNIDS)))
    labels = tmp_path / "labels.txt"
    labels.write_text(f"ILSVRC2012_val_00000001.JPEG {WNIDS[1]}\nILSVRC2012_val_00000002.JPEG 2\nILSVRC2012_val_00000003.JPEG 0\n")
    counts = imagenet_format.main(format_args(val=val, labels=labels, synsets=synsets, out=tmp_path / "out"))
    assert counts == {WNIDS[1]: 1, WNIDS[2]: 1, WNIDS[0]: 1}

    bad = tmp_path / "bad.txt"
    bad.write_text(labels.read_text().replace(WNIDS[1], "n09999999"))
    with pytest.raises(imagenet_format.FormatError, match="unknown wnid n09999999"):
        imagenet_format.main(format_args(val=val, labels=bad, synsets=synsets, out=tmp_path / "o"))
    bad.write_text("".join(labels.read_text().splitlines(True)[:2]))
    with pytest.raises(imagenet_format.FormatError, match="have no label"):
        imagenet_format.main(format_args(val=val, labels=bad, synsets=synsets, out=tmp_path / "o"))
    bad.write_text(labels.read_text() + f"ILSVRC2012_val_00000009.JPEG {WNIDS[0]}\n")
    with pytest.raises(imagenet_format.FormatError, match="name no image"):
        imagenet_format.main(format_args(val=val, labels=bad, synsets=synsets, out=tmp_path / "o"))


def test_imagenet_format_cli_error_is_one_line(tmp_path):
    result = run("imagenet_format.py", "--val", tmp_path / "missing.tar", "--out", tmp_path / "o")
    assert result.returncode != 0 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
