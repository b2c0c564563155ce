"""Inference speed on the real sample, every side measured in this run, same images.

Every side is measured in each of --rounds interleaved rounds; medians are printed. Model only (batch 16, preprocessed tensors): PyTorch eager vs onnxruntime fp32 and int8.
End to end (files -> labels, batch 32): a plain PyTorch script (torchvision transforms +
DataLoader) vs `simpsons-infer`'s Classifier with fp32 and int8 models; and the end-to-end
rate as a share of the model-only rate (decoding hidden behind inference).

Speed does not depend on the weights, so ResNet50 is randomly initialised unless --checkpoint
names a trained one; int8 accuracy is reported when the checkpoint was trained.

    .venv/bin/python bench/bench_infer.py [--checkpoint RUN/best.pt] [--images 256]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common import WORK, sample_manifest


def rate(n: int, seconds: float) -> float:
    return n / seconds


def random_checkpoint(manifest: Path, arch: str, size: int) -> Path:
    import torch

    from pipeline.engine import manifest as engine
    from pipeline.training.checkpoint import Checkpoint
    from pipeline.training.model import build_model
    from runtime.metadata import Preprocessing

    path = WORK / f"{arch}-{size}-random.pt"
    if not path.is_file():
        m = engine.read(manifest)
        torch.manual_seed(0)
        model = build_model(arch, len(m.classes), "none")
        Checkpoint(state_dict=model.state_dict(), arch=arch, classes=m.classes, preprocessing=Preprocessing.for_size(size, m.mean, m.std),
                   config={"manifest": str(manifest)}, config_hash="random", epoch=0, metrics={}).save(path)
    return path


def torch_script_rate(checkpoint: Path, paths: list[str], batch: int) -> float:
    """What a user would write with PyTorch alone."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T
    from PIL import Image

    from pipeline.training.checkpoint import load_model

    model, ckpt = load_model(checkpoint)
    pre = ckpt.preprocessing
    transform = T.Compose([T.Resize(pre.resize_size), T.CenterCrop(pre.image_size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])

    class Files(Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return transform(Image.open(paths[i]).convert("RGB"))

    loader = DataLoader(Files(), batch_size=batch, num_workers=2)
    start = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            model(x).argmax(1)
    return rate(len(paths), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from export.config import ExportConfig
    from export.onnx_export import batches, export, sample_split
    from pipeline.engine import manifest as engine
    from pipeline.training.checkpoint import load_model
    from runtime import Classifier

    manifest = sample_manifest()
    checkpoint = args.checkpoint or random_checkpoint(manifest, "resnet50", args.image_size)
    out = WORK / f"onnx-{checkpoint.parent.name}-{checkpoint.stem}" / "model.onnx"
    report = export(ExportConfig(checkpoint=checkpoint, out=out, manifest=manifest, int8=True, eval_images=2000))
    m = engine.read(manifest)
    paths = [str(m.data_root() / p) for p in m.rows("train")["path"].to_list()[: args.images]]
    model, ckpt = load_model(checkpoint)
    pre = ckpt.preprocessing
    tensors = np.concatenate(list(batches(sample_split(m, m.data_root(), "train", ckpt.classes, args.images), pre, 32)))
    print(f"{ckpt.arch} {pre.image_size} px, {len(paths)} images, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")

    fp32, int8 = Classifier(out, device="cpu"), Classifier(out.with_suffix(".int8.onnx"), device="cpu")

    def model_only(run, batch: int) -> float:
        start = time.perf_counter()
        for i in range(0, len(tensors), batch):
            run(tensors[i : i + batch])
        return rate(len(tensors), time.perf_counter() - start)

    def end_to_end(clf) -> float:
        start = time.perf_counter()
        done = sum(r.prediction is not None for r in clf.iter_predict(paths, batch_size=32))
        return rate(done, time.perf_counter() - start)

    def eager(b: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(b))

    for run in (eager, fp32.logits, int8.logits):
        run(tensors[:16])  # warm-up
    # Rounds interleave every side, so each ratio compares runs made under the same load;
    # the median over rounds is reported.
    measures = {
        "eager": lambda: model_only(eager, 16), "fp32": lambda: model_only(fp32.logits, 16),
        "int8": lambda: model_only(int8.logits, 16), "script": lambda: torch_script_rate(checkpoint, paths, 32),
        "fp32_e2e": lambda: end_to_end(fp32), "fp32_b32": lambda: model_only(fp32.logits, 32),
        "int8_e2e": lambda: end_to_end(int8), "int8_b32": lambda: model_only(int8.logits, 32),
    }
    rounds = [{name: measure() for name, measure in measures.items()} for _ in range(args.rounds)]

    def median(f) -> float:
        return float(np.median([f(r) for r in rounds]))

    print(f"model only, batch 16: PyTorch eager {median(lambda r: r['eager']):.1f} img/s; onnxruntime fp32 "
          f"{median(lambda r: r['fp32']):.1f} ({median(lambda r: r['fp32'] / r['eager']):.2f}x, target 1.8x); int8 "
          f"{median(lambda r: r['int8']):.1f} ({median(lambda r: r['int8'] / r['eager']):.2f}x, target 3.5x)")
    for name in ("fp32", "int8"):
        e2e, b32 = f"{name}_e2e", f"{name}_b32"
        print(f"end to end, batch 32, {name}: simpsons-infer {median(lambda r: r[e2e]):.1f} img/s = "
              f"{median(lambda r: r[e2e] / r['script']):.2f}x the PyTorch script ({median(lambda r: r['script']):.1f} img/s); "
              f"{median(lambda r: r[e2e] / r[b32]):.0%} of its model-only rate ({median(lambda r: r[b32]):.1f}) (target 90%)")
    v = report["variants"]
    print(f"accuracy on {report['eval_images']} val images: fp32 {v['fp32']['accuracy']:.4f} (macro-F1 {v['fp32']['macro_f1']:.4f}), "
          f"int8 {v['int8']['accuracy']:.4f} (macro-F1 {v['int8']['macro_f1']:.4f}), int8 agrees with fp32 on "
          f"{v['int8']['top1_agreement_with_reference']:.1%}" + ("" if args.checkpoint else " (random weights: accuracy meaningless)"))


if __name__ == "__main__":
    main()
