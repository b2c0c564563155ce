"""Training speed on the CPU per architecture and image size: what a fine-tuning recipe can
afford in a fixed wall time. One AdamW step on a batch of 32 random images, images per second,
median of interleaved rounds, as a ratio to ResNet18 at 128 px (the from-scratch default)
measured in the same rounds. "last stages" trains only the head and the last two blocks of
EfficientNet-Lite (the backward pass skips the early, depthwise-heavy stages).

    .venv/bin/python bench/bench_train_step.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401  (puts the repository on the path)

CASES = [("resnet18", 128, False), ("resnet18", 224, False), ("efficientnet_lite0", 128, False),
         ("efficientnet_lite0", 224, False), ("efficientnet_lite0", 128, True), ("efficientnet_lite0", 224, True)]
LAST_STAGES = ("classifier", "head", "blocks.14", "blocks.15")


def step_rate(arch: str, size: int, last_stages: bool, batch: int = 32) -> float:
    import torch

    from pipeline.training.model import build_model

    model = build_model(arch, 6, "none").train()
    if last_stages:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(LAST_STAGES))
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
    rounds = [{case: step_rate(*case) for case in CASES} for _ in range(args.rounds)]
    print(f"| arch | size | trains | img/s (median of {args.rounds}) | vs resnet18 128 px |\n|---|---|---|---|---|")
    for case in CASES:
        rate = statistics.median(r[case] for r in rounds)
        ratio = statistics.median(r[case] / r[CASES[0]] for r in rounds)
        print(f"| {case[0]} | {case[1]} | {'head + last 2 blocks' if case[2] else 'everything'} | {rate:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
