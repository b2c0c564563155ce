"""Inference speed on the real sample, every side measured in this run, same images.

Each rate is the best of a few runs. Model only (batch 16, preprocessed tensors): PyTorch eager vs onnxruntime fp32 and int8.
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


from common import WORK, sample_manifest


def rate(n: int, seconds: float) -> float:
    return n / seconds


def random_checkpoint(manifest: Path, arch: str, size: int) -> Path:
    import torch

    from pipeline import manifest as engine
    from pipeline.model import build_model
    from runtime.metadata import Preprocessing

    path = WORK / f"{arch}-{size}-random.pt"
    if not path.is_file():
        _, stats = engine.read(manifest)
        pre = Preprocessing.for_size(size, stats["mean"], stats["std"])
        torch.manual_seed(0)
        model = build_model(arch, len(stats["classes"]), "none")
        torch.save({"state_dict": model.state_dict(), "arch": arch, "classes": stats["classes"], "mean": list(pre.mean),
                    "std": list(pre.std), "image_size": size, "resize_size": pre.resize_size,
                    "config": {"manifest": str(manifest)}, "config_hash": "random"}, path)
    return path


def torch_script_rate(checkpoint: Path, paths: list[str], batch: int) -> float:
    """What a user would write with PyTorch alone."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T
    from PIL import Image

    from pipeline.model import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    transform = T.Compose([T.Resize(ckpt["resize_size"]), T.CenterCrop(ckpt["image_size"]), T.ToTensor(),
                           T.Normalize(ckpt["mean"], ckpt["std"])])

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
    args = parser.parse_args()

    import torch

    from export.onnx_export import export, load_images
    from pipeline import data, manifest as engine
    from pipeline.model import checkpoint_preprocessing, load_checkpoint
    from runtime import Classifier

    manifest = sample_manifest()
    checkpoint = args.checkpoint or random_checkpoint(manifest, "resnet50", args.image_size)
    out = WORK / f"onnx-{checkpoint.parent.name}-{checkpoint.stem}" / "model.onnx"
    report = export(checkpoint, out, manifest, int8=True, eval_images=2000)
    table, stats = engine.read(manifest)
    root = Path(stats["config"]["data_root"])
    paths = [str(root / p) for p in data.split_rows(table, "train")["path"].to_list()[: args.images]]
    model, ckpt = load_checkpoint(checkpoint)
    pre = checkpoint_preprocessing(ckpt)
    tensors = load_images(manifest, "train", ckpt["classes"], pre, args.images).arrays
    print(f"{ckpt['arch']} {pre.image_size} px, {len(paths)} images, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")

    def best_of(repeats: int, measure) -> float:
        """The fastest of a few runs: the least disturbed by the rest of the machine."""
        return max(measure() for _ in range(repeats))

    def model_only(run, batch: int = 16) -> float:
        run(tensors[:batch])  # warm-up

        def once() -> float:
            start = time.perf_counter()
            for i in range(0, len(tensors), batch):
                run(tensors[i : i + batch])
            return rate(len(tensors), time.perf_counter() - start)

        return best_of(3, once)

    fp32, int8 = Classifier(out, device="cpu"), Classifier(out.with_suffix(".int8.onnx"), device="cpu")
    with torch.inference_mode():
        eager = model_only(lambda b: model(torch.from_numpy(b)))
    # the torch script gets the same best-of-two as simpsons-infer below
    script_rate = best_of(2, lambda: torch_script_rate(checkpoint, paths, 32))
    m32, m8 = model_only(fp32.logits), model_only(int8.logits)
    print(f"model only, batch 16: PyTorch eager {eager:.1f} img/s; onnxruntime fp32 {m32:.1f} ({m32 / eager:.2f}x, target 1.8x); "
          f"int8 {m8:.1f} ({m8 / eager:.2f}x, target 3.5x)")

    script = script_rate
    for name, clf, model_rate in (("fp32", fp32, model_only(fp32.logits, 32)), ("int8", int8, model_only(int8.logits, 32))):
        def once(clf=clf) -> float:
            start = time.perf_counter()
            done = sum(r.prediction is not None for r in clf.iter_predict(paths, batch_size=32))
            return rate(done, time.perf_counter() - start)

        e2e = best_of(2, once)
        print(f"end to end, batch 32, {name}: simpsons-infer {e2e:.1f} img/s = {e2e / script:.2f}x the PyTorch script "
              f"({script:.1f} img/s); {e2e / model_rate:.0%} of its model-only rate ({model_rate:.1f}) (target 90%)")
    v = report["variants"]
    print(f"accuracy on {report['eval_images']} val images: fp32 {v['fp32']['accuracy']:.4f} (macro-F1 {v['fp32']['macro_f1']:.4f}), "
          f"int8 {v['int8']['accuracy']:.4f} (macro-F1 {v['int8']['macro_f1']:.4f}), int8 agrees with fp32 on "
          f"{v['int8']['top1_agreement_with_fp32']:.1%}" + ("" if args.checkpoint else " (random weights: accuracy meaningless)"))


if __name__ == "__main__":
    main()
