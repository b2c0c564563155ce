"""Training speed on the CPU per architecture and image size: what a fine-tuning recipe can
afford in a fixed wall time. One AdamW step on a batch of 32 random images, images per second,
median of interleaved rounds, in the channels-last layout training uses and, for comparison, in
PyTorch's default contiguous (NCHW) layout; as a ratio to ResNet18 at 128 px (the from-scratch
default) measured in the same rounds. "from 1/N" trains only the layers at 1/N of the input
resolution or coarser (``--train-from N``: the backward pass skips the early, depthwise-heavy stages).

    .venv/bin/python bench/bench_train_step.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401  (puts the repository on the path)

CASES = [("resnet18", 128, 1), ("resnet18", 224, 1), ("efficientnet_lite0", 128, 1), ("efficientnet_lite0", 160, 1),
         ("efficientnet_lite0", 224, 1), ("efficientnet_lite0", 128, 16), ("efficientnet_lite0", 160, 16),
         ("efficientnet_lite0", 224, 16), ("efficientnet_lite0", 128, 32), ("efficientnet_lite0", 224, 32)]
LAYOUTS = ("channels-last", "nchw")  # training's (``inference.on_device``), PyTorch's default


def step_rate(arch: str, size: int, train_from: int, layout: str, batch: int = 32) -> float:
    import torch

    from pipeline.training.inference import on_device
    from pipeline.training.model import build_model, freeze_finer_than, train_mode

    model = build_model(arch, 6, "none")
    freeze_finer_than(model, train_from)
    train_mode(model)
    model = on_device(model, torch.device("cpu")) if layout == "channels-last" else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 6, (batch,))
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds[1:])  # the first step warms up


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = [{(*case, layout): step_rate(*case, layout) for case in CASES for layout in LAYOUTS} for _ in range(args.rounds)]
    print(f"| arch | size | trains | img/s, channels-last (median of {args.rounds}) | vs resnet18 128 px | "
          "img/s, NCHW | channels-last vs NCHW |\n|---|---|---|---|---|---|---|")
    for case in CASES:
        last, nchw, base = (*case, "channels-last"), (*case, "nchw"), (*CASES[0], "channels-last")
        rate, plain = (statistics.median(r[k] for r in rounds) for k in (last, nchw))
        ratio, gain = (statistics.median(r[last] / r[k] for r in rounds) for k in (base, nchw))
        print(f"| {case[0]} | {case[1]} | {f'from 1/{case[2]}' if case[2] > 1 else 'everything'} | {rate:.1f} | {ratio:.2f}x | "
              f"{plain:.1f} | {gain:.2f}x |")


if __name__ == "__main__":
    main()
