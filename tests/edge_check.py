"""Run by `make edge-check` inside a venv holding only the base install: the runtime's
footprint is numpy, Pillow and one onnxruntime build, never torch or polars."""

import importlib.metadata as md
import platform
import sys

installed = {d.metadata["Name"].lower() for d in md.distributions()}
heavy = installed & {"torch", "torchvision", "polars", "onnx", "scikit-learn", "tensorboard", "click"}
builds = installed & {"onnxruntime", "onnxruntime-gpu"}
expected = "onnxruntime-gpu" if (sys.platform == "linux" and platform.machine() == "x86_64") else "onnxruntime"
problems = []
if heavy:
    problems.append(f"base install pulled {sorted(heavy)}")
if builds != {expected}:
    problems.append(f"expected only {expected}, found {sorted(builds)}")
if problems:
    sys.exit("edge check failed: " + "; ".join(problems))
print(f"edge install ok: {len(installed)} distributions, {expected}, no torch/polars")
