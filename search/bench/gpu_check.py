"""The GPU path, checked on a machine that has one: ``python -m search.bench.gpu_check``.

Not part of CI (CI machines have no GPU). Each step runs the real command line, once on CUDA and,
for comparison, once on the CPU, and prints what it measured:

1. ``train``: a ResNet-18 teacher on digits (inputs resized to 28 px) trained for a few epochs;
2. ``try``: one pipeline config (structured pruning, distillation, int8) on that teacher: the
   pruning's importance pass, distillation and the teacher's outputs run on the device, the
   exported file is measured in ONNX Runtime on the CPU as always;
3. a two-trial Ray search with ``--gpus-per-trial 0.5`` on the demo workload.

It ends with a table (seconds on each device, the ratio, accuracies) and writes the figures as
JSON to ``--out``. Exits 2 with one line when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from search import checkout_pythonpath

EPOCHS = 4
TRY_SETTINGS = ("prune.ratio=0.5", "distill.epochs=4", "quantize.mode=int8-static")
TINY_SPACE = '"distill.epochs" = 2\n"prune.steps" = 1\ndrop = ["cluster.k"]\nprofile_epochs = 2\n'


def _cli(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run ``mcaas-search ARGS`` in ``cwd``; its wall time and stdout (raises on failure)."""
    env = dict(os.environ, PYTHONPATH=checkout_pythonpath())
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"gpu_check: `mcaas-search {' '.join(args)}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds, done.stdout


def _train(device: str, folder: Path) -> dict[str, float]:
    out = folder / f"r18-{device}.pt"
    seconds, _ = _cli(["train", "--model", "resnet18", "--dataset", "digits", "--epochs", str(EPOCHS),
                       "--device", device, "--out", str(out)], folder)
    metrics = json.loads(out.with_suffix(".json").read_text())
    return {"seconds": seconds, "val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"]}


def _try(device: str, weights: Path, folder: Path) -> dict[str, float]:
    args = ["try", "--model", "resnet18", "--weights", str(weights), "--dataset", "digits", "--device", device,
            "--workdir", str(folder / f"try-{device}"), "--json"]
    for setting in TRY_SETTINGS:
        args += ["--set", setting]
    seconds, stdout = _cli(args, folder)
    summary = json.loads(stdout)
    metrics = summary["metrics"]
    return {"seconds": seconds, "val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"],
            "size_ratio": summary["ratios"].get("size", 0.0)}


def _ray(folder: Path) -> dict[str, float]:
    (folder / "tiny.toml").write_text(TINY_SPACE)
    seconds, _ = _cli(["--backend", "ray", "--gpus-per-trial", "0.5", "--device", "cuda", "--trials", "2",
                       "--no-profiles", "--space", "tiny.toml", "--study", "gpu-ray"], folder)
    return {"seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="where the figures go (JSON)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; run this on a machine with a GPU", file=sys.stderr)
        return 2
    figures: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        for device in ("cuda", "cpu"):
            print(f"train resnet18 on digits, {EPOCHS} epochs, on {device} ...", flush=True)
            figures[f"train_{device}"] = _train(device, folder)
        for device in ("cuda", "cpu"):
            print(f"try {' '.join(TRY_SETTINGS)} on {device} ...", flush=True)
            figures[f"try_{device}"] = _try(device, folder / "r18-cuda.pt", folder)
        print("a two-trial Ray search with --gpus-per-trial 0.5 ...", flush=True)
        figures["ray_gpu"] = _ray(folder)
    print(f"\n{figures['gpu']} (torch {figures['torch']}, CUDA {figures['cuda']})")
    print(f"{'step':<8} {'cuda s':>8} {'cpu s':>8} {'cpu/cuda':>9}  accuracy (cuda / cpu)")
    for step in ("train", "try"):
        gpu, cpu = figures[f"{step}_cuda"], figures[f"{step}_cpu"]
        assert isinstance(gpu, dict) and isinstance(cpu, dict)
        print(f"{step:<8} {gpu['seconds']:>8.1f} {cpu['seconds']:>8.1f} {cpu['seconds'] / gpu['seconds']:>8.1f}x"
              f"  val {gpu['val_acc']:.2f} / {cpu['val_acc']:.2f} %")
    ray = figures["ray_gpu"]
    assert isinstance(ray, dict)
    print(f"ray      {ray['seconds']:>8.1f}  (2 trials, --gpus-per-trial 0.5)")
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
