"""serving.export_model and serving.process.export_models (exports run in subprocesses)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.process import export_models

pytestmark = pytest.mark.integration


def test_export_layout_and_accuracy(export_result: dict) -> None:
    version_dir = Path(export_result["dir"]) / "digits" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no staging leftovers

    match = re.search(r"held-out accuracy: uint8 ([\d.]+), jpeg round-trip ([\d.]+)", export_result["stdout"])
    assert match, export_result["stdout"]
    assert float(match[1]) >= 0.95 and float(match[2]) >= 0.95
    assert re.search(r"^exported digits version 1 to .*digits/1 in [\d.]+s", export_result["stdout"], re.M)
    assert export_result["seconds"] < 120
    # The .tflite beside it, checked at export against the SavedModel (the export fails when they disagree).
    assert (version_dir / "model.tflite").is_file()
    assert re.search(r"^model\.tflite: [\d.]+ MB, signature serving_default: top-1 agrees on 8 of 8",
                     export_result["stdout"], re.M), export_result["stdout"]


def test_export_models_raises_with_the_exports_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"export of nosuch failed \(exit 2\)(.|\n)*invalid choice"):
        export_models(tmp_path, model="nosuch")
