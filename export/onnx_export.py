"""Checkpoint -> self-describing ONNX, verified against PyTorch, plus int8, fp16 and portable
variants, each with its ``.json`` sidecar.

The file carries everything a consumer needs (classes, normalisation, resize rule, temperature,
the open-set score's name and threshold: see ``runtime.metadata``). The graph has three
outputs: ``logits``, ``features`` (L2-normalised, for similarity search) and ``ood_score``.
Verification, each variant's accuracy and its unknown threshold use the runtime's own
``Classifier``, i.e. exactly what users will run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from export.config import OPSET, ExportConfig
from export.quantize import convert_fp16, quantize_int8
from pipeline.engine.manifest import Manifest, read as read_manifest
from pipeline.engine.schema import Split, on_disk
from pipeline.training.checkpoint import load_model
from pipeline.training.inference import check_classes, usable_rows
from pipeline.training.network import Network
from pipeline.writers import atomic_write, write_json
from runtime.classifier import Classifier
from runtime.errors import SimpsonsError
from runtime.files import check_writable
from runtime.listing import display_path
from runtime.metadata import (
    FEATURES, INPUT_NAME, LOGITS, OOD_SCORE, PROBABILITIES, ModelInfo, Preprocessing, encode, sidecar, sidecar_path,
)
from runtime.metrics import classification_report
from runtime.openset import threshold_for
from runtime.preprocess import preprocess

log = logging.getLogger("simpsons.export")
PORTABLE_AGREEMENT = 0.995  # least top-1 agreement of a portable model with the Python runtime, on clear answers
CLEAR_MARGIN = 0.1  # an answer is clear when its top probability leads the second by this much; below, a flip is a near tie
LAYOUTS = {  # what each tensor holds, for the sidecar's readers
    "tensor(float)": "NCHW float32, RGB, preprocessed as 'preprocessing' says",
    "tensor(uint8)": "NHWC uint8, RGB 0-255 as decoded, any height and width",
    LOGITS: "N x classes, before temperature and softmax",
    PROBABILITIES: "N x classes, calibrated (temperature applied), sums to 1",
    FEATURES: "N x D, the L2-normalised embedding: EfficientNet-Lite's last block, other networks' penultimate features (cosine similarity = dot product)",
    OOD_SCORE: "N, higher = less like any known class; above ood_threshold the verdict is 'unknown'",
}


class ExportError(SimpsonsError):
    """Export or verification failed; the message says which and why."""


@dataclass(frozen=True)
class Sample:
    """Image files of one manifest split with their labels."""

    paths: list[Path]
    labels: list[str]

    def head(self, n: int) -> Sample:
        return Sample(self.paths[:n], self.labels[:n])


def sample_split(manifest: Manifest, root: Path, split: Split, classes: list[str], limit: int, seed: int = 0) -> Sample:
    """Up to ``limit`` usable images of ``split`` (a seeded sample when there are more)."""
    rows = usable_rows(manifest, split, classes)
    if len(rows) > limit:
        rows = rows.sample(limit, seed=seed).sort("path")
    if not len(rows):
        raise ExportError(f"no usable {split} images in the manifest to verify or calibrate with")
    paths = [on_disk(root, p) for p in rows["path"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ExportError(f"{display_path(missing[0])}: {split} image not found ({len(missing)} missing; moved data? pass --data-root)")
    return Sample(paths, rows["label"].to_list())


def batches(sample: Sample, pre: Preprocessing, size: int) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches, made as they are consumed: memory holds one batch."""
    for start in range(0, len(sample.paths), size):
        yield np.stack([preprocess(p, pre) for p in sample.paths[start : start + size]])


def _value_info(value) -> dict:
    kind = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in kind.shape.dim]
    import onnx

    dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
    layout = LAYOUTS.get(value.name) or LAYOUTS.get(f"tensor({'float' if dtype == 'float32' else dtype})", "")
    return {"name": value.name, "dtype": dtype, "shape": shape, "layout": layout}


def _described(values) -> str:
    return ", ".join(f"{v.name} ({_value_info(v)['layout']})" for v in values)


def write_metadata(path: Path, info: ModelInfo) -> None:
    """Put ``info`` into the file's ``metadata_props``, then write the sidecar beside it
    (after, because the sidecar holds the final file's sha256)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in encode(info).items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (
        f"Simpsons character classifier ({info.arch}, {len(info.classes)} classes, {info.variant}). "
        f"Inputs: {_described(model.graph.input)}. Outputs: {_described(model.graph.output)}. "
        f"Preprocessing (plain models): {info.preprocessing.describe()}."
    )
    atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
    content = sidecar(info, path, [_value_info(v) for v in model.graph.input], [_value_info(v) for v in model.graph.output])
    write_json(sidecar_path(path), content)


def to_onnx(network, pre: Preprocessing, path: Path, opset: int = OPSET) -> None:
    """torch.export-based exporter: one self-contained file (no external data), a dynamic
    batch axis, the graph optimised by onnxscript."""
    import torch

    dummy = torch.randn(2, 3, pre.image_size, pre.image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)

    def write(tmp: Path) -> None:
        torch.onnx.export(
            network.eval(), (dummy,), str(tmp), dynamo=True, opset_version=opset, external_data=False,
            input_names=[INPUT_NAME], output_names=[LOGITS, FEATURES, OOD_SCORE], dynamic_shapes=({0: batch},),
            verbose=False,
        )

    atomic_write(path, write)


def verify(network, path: Path, sample: Sample, pre: Preprocessing, tolerance: float) -> dict:
    """onnx.checker, then onnxruntime against PyTorch on the same preprocessed images: every
    output, so the open-set score is checked along with the logits."""
    import onnx
    import torch

    onnx.checker.check_model(str(path), full_check=True)
    clf = Classifier(path, device="cpu", unknown=False)
    names = [o.name for o in clf.session.get_outputs()]
    expected, got = [], []
    with torch.inference_mode():
        for batch in batches(sample, pre, 32):
            expected.append([t.numpy() for t in network(torch.from_numpy(batch))])
            got.append(clf.session.run(None, {INPUT_NAME: batch}))
    expected = dict(zip((LOGITS, FEATURES, OOD_SCORE), (np.concatenate(parts) for parts in zip(*expected))))
    got = dict(zip(names, (np.concatenate(parts) for parts in zip(*got))))
    result = {
        "images": len(got[LOGITS]),
        "max_abs_logit_diff": float(np.abs(expected[LOGITS] - got[LOGITS]).max()),
        "max_abs_feature_diff": float(np.abs(expected[FEATURES] - got[FEATURES]).max()),
        "max_abs_ood_score_diff": float(np.abs(expected[OOD_SCORE] - got[OOD_SCORE].reshape(-1)).max()),
        "top1_agreement": float((expected[LOGITS].argmax(1) == got[LOGITS].argmax(1)).mean()),
        "tolerance": tolerance,
    }
    worst = max(result["max_abs_logit_diff"], result["max_abs_ood_score_diff"])
    if result["top1_agreement"] < 1.0 or worst > tolerance:
        raise ExportError(
            f"{path}: onnxruntime disagrees with PyTorch (top-1 agreement {result['top1_agreement']:.4f}, "
            f"max |logit diff| {result['max_abs_logit_diff']:.2e}, max |ood_score diff| "
            f"{result['max_abs_ood_score_diff']:.2e}; tolerance {tolerance:.0e})"
        )
    return result


@dataclass(frozen=True)
class Scored:
    """One model file run over the val sample the way users run it (Classifier over files)."""

    labels: list[str]
    probabilities: np.ndarray  # N x classes
    ood: np.ndarray | None  # N


def score(path: Path, sample: Sample, classes: list[str]) -> Scored:
    results = list(Classifier(path, device="cpu", unknown=False).iter_predict(sample.paths, top_k=len(classes), batch_size=32))
    failed = [r for r in results if r.prediction is None]
    if failed:
        raise ExportError(f"{failed[0].source}: {failed[0].error}")
    index = {c: i for i, c in enumerate(classes)}
    probs = np.zeros((len(results), len(classes)), dtype=np.float32)
    for row, r in enumerate(results):
        for label, p in r.prediction.top_k:
            probs[row, index[label]] = p
    ood = [r.prediction.ood_score for r in results]
    return Scored([classes[i] for i in probs.argmax(1)], probs, None if None in ood else np.array(ood))


def agreement(scored: Scored, reference: Scored) -> dict:
    """Top-1 agreement with the reference over all images and over its clear answers (top two
    probabilities at least ``CLEAR_MARGIN`` apart), and how many near ties flipped: a resize
    computed another way can turn a near tie, which says nothing about the variant."""
    same = np.array([a == b for a, b in zip(scored.labels, reference.labels)])
    top2 = np.sort(reference.probabilities, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= CLEAR_MARGIN
    return {"top1_agreement_with_reference": float(same.mean()),
            "top1_agreement_on_clear_answers": float(same[clear].mean()) if clear.any() else 1.0,
            "clear_answers": int(clear.sum()), "near_tie_flips": int((~same & ~clear).sum()),
            "max_abs_probability_diff": float(np.abs(scored.probabilities - reference.probabilities).max())}


def web_model(report: dict) -> str:
    """The portable file the browser page ships (``make web`` copies it): the int8 one where it
    answers as fp32 does on fp32's clear answers (``PORTABLE_AGREEMENT``, the bar a portable
    model meets), since it is a quarter of the download and faster in WebAssembly; else fp32."""
    variants = report["variants"]
    int8 = variants.get("portable-int8", {}).get("agreement_with_fp32", {})
    if int8.get("top1_agreement_on_clear_answers", 0.0) >= PORTABLE_AGREEMENT:
        return variants["portable-int8"]["file"]
    return variants["portable"]["file"]


def finish(path: Path, info: ModelInfo, val: Sample, classes: list[str], accept_known: float, reference: Scored | None = None) -> tuple[dict, Scored]:
    """Score one written model on val, choose its own unknown threshold there, and write its
    metadata and sidecar; returns the variant's report and its scores."""
    write_metadata(path, info)
    scored = score(path, val, classes)
    report = classification_report(val.labels, scored.labels, classes)
    result = {"file": path.name, "sidecar": sidecar_path(path).name, "size_mb": round(path.stat().st_size / 2**20, 2),
              "accuracy": report["accuracy"], "macro_f1": report["macro avg"]["f1"]}
    if reference is not None:
        result.update(agreement(scored, reference))
    threshold, problem = threshold_for(scored.ood, accept_known) if scored.ood is not None else (None, "no ood_score output")
    if problem:
        log.warning("%s: %s", path.name, problem)
    else:
        result.update(ood_threshold=threshold, accept_known=accept_known, val_known_accepted=float((scored.ood <= threshold).mean()))
    write_metadata(path, info.with_threshold(threshold, accept_known))
    return result, scored


def _log_variant(name: str, v: dict, fp32: dict) -> None:
    agreed = (f", agreement {v['top1_agreement_with_reference']:.2%} ({v['top1_agreement_on_clear_answers']:.2%} on "
              f"{v['clear_answers']} clear answers, {v['near_tie_flips']} near-tie flips), max |prob diff| "
              f"{v['max_abs_probability_diff']:.1e}") if "top1_agreement_with_reference" in v else ""
    threshold = f"; unknown threshold {v['ood_threshold']:.4g}" if "ood_threshold" in v else "; no unknown threshold"
    log.info("%s: %s: accuracy %.4f (fp32 %.4f), macro-F1 %.4f%s%s",
             name, v["file"], v["accuracy"], fp32["accuracy"], v["macro_f1"], agreed, threshold)


def export(config: ExportConfig) -> dict:
    """Write ``out`` (+ ``.int8.onnx``, ``.fp16.onnx``, ``.portable.onnx``,
    ``.portable.int8.onnx``), a ``.json`` sidecar for each, and ``<out>.report.json``."""
    from export.portable import make_portable, preprocessing_nodes

    c, out = config, config.out
    model, ckpt = load_model(c.checkpoint)
    pre, classes, cal = ckpt.preprocessing, list(ckpt.classes), ckpt.calibration
    if c.portable:
        preprocessing_nodes(pre)  # fails now, in one line, if the graph cannot express it
    manifest_path = c.manifest or Path(ckpt.config.get("manifest", ""))
    if not manifest_path.is_file():
        raise ExportError(f"{manifest_path}: manifest not found (pass --manifest); export verifies on its val images")
    manifest = read_manifest(manifest_path)
    check_classes(classes, manifest, c.checkpoint)
    root = manifest.data_root(c.data_root or ckpt.config.get("data_root"))
    info = ModelInfo(classes=tuple(classes), preprocessing=pre, arch=ckpt.arch, config_hash=ckpt.config_hash,
                     temperature=cal.temperature, ood_score=cal.ood_score)
    try:
        check_writable(out.parent)
    except OSError as e:
        raise ExportError(f"{out}: cannot write there ({e.strerror or e})") from None

    network = Network(model, cal, len(classes)).eval()
    val = sample_split(manifest, root, Split.VAL, classes, c.eval_images)
    to_onnx(network, pre, out, c.opset)
    write_metadata(out, info)
    report = {"checkpoint": str(c.checkpoint), "opset": c.opset, "config": c.to_dict(), "calibration": {
        "temperature": cal.temperature, "ood_score": cal.ood_score, "accept_known": c.accept_known},
        "verification": verify(network, out, val.head(c.verify_images), pre, c.tolerance)}
    check = report["verification"]
    log.info("fp32: %s verified on %d val images: top-1 agreement %.2f%%, max |logit diff| %.2e",
             out, check["images"], 100 * check["top1_agreement"], check["max_abs_logit_diff"])
    fp32, fp32_scored = finish(out, info, val, classes, c.accept_known)
    report["variants"] = {"fp32": fp32}
    scored = {"fp32": fp32_scored}

    # (name, file, how to make it from the files before it, the variant it must agree with)
    plan: list[tuple[str, Path, Callable[[Path], None], str]] = []
    if c.int8:
        train = sample_split(manifest, root, Split.TRAIN, classes, c.calibration_images, seed=1)
        plan.append(("int8", out.with_suffix(".int8.onnx"), lambda p: quantize_int8(out, p, lambda: batches(train, pre, 16)), "fp32"))
    if c.fp16:
        plan.append(("fp16", out.with_suffix(".fp16.onnx"), lambda p: convert_fp16(out, p), "fp32"))
    if c.portable:
        plan.append(("portable", out.with_suffix(".portable.onnx"), lambda p: make_portable(out, p, pre, cal.temperature), "fp32"))
        if c.int8:
            int8_path = out.with_suffix(".int8.onnx")
            plan.append(("portable-int8", out.with_suffix(".portable.int8.onnx"),
                         lambda p: make_portable(int8_path, p, pre, cal.temperature), "int8"))
    for name, path, make, reference in plan:
        make(path)
        result, scored[name] = finish(path, replace(info, variant=name), val, classes, c.accept_known, scored[reference])
        result["reference"] = reference
        if name == "portable-int8":  # what the page's choice between the two portable files rests on
            result["agreement_with_fp32"] = agreement(scored[name], scored["fp32"])
        report["variants"][name] = result
        _log_variant(name, result, fp32)
        if name.startswith("portable") and result["top1_agreement_on_clear_answers"] < PORTABLE_AGREEMENT:
            raise ExportError(f"{path}: the portable model agrees with the Python runtime ({reference}) on only "
                              f"{result['top1_agreement_on_clear_answers']:.2%} of the {result['clear_answers']} val images "
                              f"it answers clearly (needs {PORTABLE_AGREEMENT:.1%})")
    report["eval_images"] = len(val.labels)
    if c.portable:
        report["web_model"] = web_model(report)
        log.info("the browser page ships %s (make web)", report["web_model"])
    write_json(out.with_suffix(".report.json"), report)
    return report
