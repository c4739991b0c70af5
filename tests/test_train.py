import json
import os
import subprocess
import sys

import torch

import models
from conftest import ROOT
from test_data import make_cifar_folder


def run_train(*flags):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def read_log(out):
    return [json.loads(line) for line in (out / "resnet18_cifar10_log.jsonl").read_text().splitlines()]


def test_train_then_resume(tmp_path):
    data = make_cifar_folder(str(tmp_path / "data"), per_class=(8, 2))
    out = tmp_path / "ckpt"
    common = ["--arch", "resnet18", "--epochs", "2", "--batch-size", "8", "--data", data, "--out-dir", str(out), "--lr", "0.05"]

    first = run_train(*common, "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    last = models.read_checkpoint(str(out / "resnet18_cifar10_last.pth"))
    assert last["epoch"] == 1 and "optimizer" in last and "scheduler" in last

    second = run_train(*common, "--resume")
    assert second.returncode == 0, second.stderr
    assert "1 of 2 epochs done" in second.stdout
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert models.read_checkpoint(str(out / "resnet18_cifar10_last.pth"))["epoch"] == 2
    # the scheduler resumed mid-schedule: cosine ends at 0 after the last step
    assert rows[-1]["lr"] < 1e-6 < rows[0]["lr"]

    best = models.read_checkpoint(str(out / "resnet18_cifar10.pth"))
    assert best["arch"] == "resnet18" and round(best["top1"], 2) == max(r["test_top1"] for r in rows)
    model = models.load_checkpoint(str(out / "resnet18_cifar10.pth"), "resnet18", "cifar10")
    assert not model.training
    assert not [p for p in os.listdir(out) if ".tmp" in p]

    # a second cosine cycle from the best model, added to the same log
    start = out / "cycle1.pth"
    os.replace(out / "resnet18_cifar10.pth", start)
    cycle = [*common[:2], "--epochs", "1", *common[4:], "--init", str(start), "--resume"]
    third = run_train(*cycle)
    assert third.returncode == 0, third.stderr
    assert "cycle 2" in third.stdout
    rows = read_log(out)
    assert [(r.get("cycle"), r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1)]
    last = models.read_checkpoint(str(out / "resnet18_cifar10_last.pth"))
    assert (last["cycle"], last["epoch"], last["args"]["init"]) == (2, 1, str(start))
    # the best model is written only where the new cycle beats its start
    beat = rows[-1]["test_top1"] > round(best["top1"], 2)
    assert (out / "resnet18_cifar10.pth").exists() == beat
    # the log rounds to 2 decimals; the checkpoint keeps the exact accuracy
    assert round(last["best_top1"], 2) == (rows[-1]["test_top1"] if beat else round(best["top1"], 2))

    again = run_train(*cycle)  # --resume now continues the finished cycle 2, not cycle 1
    assert again.returncode == 0, again.stderr
    assert "1 of 1 epochs done" in again.stdout
    assert len(read_log(out)) == 3

    wrong = run_train("--arch", "mobilenetv2", *common[2:], "--init", str(start))
    assert wrong.returncode != 0 and wrong.stderr.startswith("error:") and "resnet18" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_train_reports_missing_data(tmp_path):
    result = run_train("--arch", "mobilenetv2", "--data", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:") and "--data" in result.stderr
    assert "Traceback" not in result.stderr


def test_swa_keeps_the_average_of_the_epochs(tmp_path):
    data = make_cifar_folder(str(tmp_path / "data"), per_class=(8, 2))
    out = tmp_path / "ckpt"
    common = ["--arch", "resnet18", "--batch-size", "8", "--data", data, "--out-dir", str(out),
              "--lr", "0.05", "--schedule", "constant", "--warmup-epochs", "0", "--swa", "--swa-bn-images", "40"]
    first = run_train(*common, "--epochs", "2", "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    epoch1 = models.read_checkpoint(str(out / "resnet18_cifar10_last.pth"))
    second = run_train(*common, "--epochs", "2", "--resume")
    assert second.returncode == 0, second.stderr
    last = models.read_checkpoint(str(out / "resnet18_cifar10_last.pth"))

    rows = read_log(out)
    assert [r["swa_models"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == rows[1]["lr"] == 0.05  # constant schedule
    # the resumed average is the mean of the two epochs' weights, not the last epoch's
    name = "conv1.weight"
    mean = (epoch1["state_dict"][name] + last["state_dict"][name]) / 2
    assert torch.allclose(last["averaged"]["module." + name], mean, atol=1e-6)
    assert not torch.allclose(last["averaged"]["module." + name], last["state_dict"][name], atol=1e-4)
    # the kept model carries re-estimated BN statistics, not those of either epoch's weights
    best = models.read_checkpoint(str(out / "resnet18_cifar10.pth"))
    stats = "bn1.running_mean"
    assert not torch.equal(best["state_dict"][stats], last["state_dict"][stats])
    kept = mean if best["epoch"] == 2 else epoch1["state_dict"][name]
    assert torch.allclose(best["state_dict"][name], kept, atol=1e-6)

    # a constant learning rate lets --resume lengthen the run: one more model in the average
    longer = run_train(*common, "--epochs", "3", "--resume")
    assert longer.returncode == 0, longer.stderr
    rows = read_log(out)
    assert [(r["epoch"], r["swa_models"]) for r in rows] == [(1, 1), (2, 2), (3, 3)]
