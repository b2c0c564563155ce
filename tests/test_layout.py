"""The package's layers, as a user of each part meets them: the data engine and the command
line start without torch, and the declared direction of imports holds (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted({{'torch', 'torchvision', 'onnx'}} & set(sys.modules)))"
    return eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout)


def test_the_engine_and_the_commands_load_no_torch():
    engine = "import pipeline.engine.manifest, pipeline.engine.cache, pipeline.engine.schema, pipeline.figures, pipeline.synth"
    assert loaded_after(engine) == []
    assert loaded_after("import pipeline.cli, export.config, pipeline.training.config") == []


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (the [dev] extra)")
    done = subprocess.run([lint, "--config", str(REPO / "pyproject.toml")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:]
