"""Ray Data on a local instance: fingerprinting and batch inference give exactly the
single-machine results. Skipped without the [distributed] extra unless CI requires it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main as simpsons
from runtime.cli import main as infer
from tests import tiny_models as tiny
from tests.conftest import easy_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError:
        if os.environ.get("SIMPSONS_REQUIRE_RAY") == "1":
            pytest.fail("the Ray test is required here but ray is not installed (pip install '.[distributed]')")
        pytest.skip("needs the [distributed] extra")
    yield "local"
    ray.shutdown()


def test_fingerprints_on_ray_give_the_same_manifest(ray_local, tmp_path: Path, monkeypatch):
    data = easy_dataset(tmp_path / "data", per_class=20, test_per_class=3)
    outputs = {}
    for name, extra in (("local", []), ("ray", ["--ray", ray_local])):
        monkeypatch.setenv("SIMPSONS_CACHE", str(tmp_path / f"cache-{name}"))  # each fingerprints everything itself
        result = CliRunner().invoke(simpsons, ["manifest", str(data), "--out", str(tmp_path / name), "--no-plots", *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = (tmp_path / name / "manifest.parquet").read_bytes()
    assert outputs["ray"] == outputs["local"]


def test_inference_on_ray_gives_the_same_rows(ray_local, tmp_path: Path):
    images = easy_dataset(tmp_path / "easy", per_class=1, test_per_class=30) / "kaggle_simpson_testset"
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    model = tiny.plain(tmp_path / "model.onnx", ood_threshold=-1.0)
    assert infer([str(images), "--model", str(model), "-o", str(tmp_path / "local.csv"), "--threads", "1", "-q"]) == 0
    assert infer([str(images), "--model", str(model), "-o", str(tmp_path / "ray.csv"), "--ray", ray_local, "-q"]) == 0
    local, ray = (tmp_path / "local.csv").read_text(), (tmp_path / "ray.csv").read_text()
    assert ray == local and len(local.splitlines()) == 92  # header + 90 images + the broken one


def test_an_unreachable_cluster_is_one_line(tmp_path: Path, capsys):
    images = easy_dataset(tmp_path / "easy", per_class=1, test_per_class=1) / "kaggle_simpson_testset"
    model = tiny.plain(tmp_path / "model.onnx")
    assert infer([str(images), "--model", str(model), "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Ray cluster" in err and "Traceback" not in err
    result = CliRunner().invoke(simpsons, ["manifest", str(easy_dataset(tmp_path / "d", per_class=3)), "--out", str(tmp_path / "o"),
                                           "--ray", "127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot reach a Ray cluster" in result.output and result.output.count("\n") == 1
