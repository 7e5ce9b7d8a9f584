"""Which modules may import torch: the one list of the house rule, checked module by module.

Every module below is imported alone in a fresh interpreter, so one that pulls torch in is named. ``rio`` imports
every plugin at start-up, so ``rs_pgd`` and ``rs_pgd.cli.main`` are on the list too.
"""

import subprocess
import sys
from pathlib import Path

import pytest

TORCH_FREE = [
    "rs_pgd", "rs_pgd.api", "rs_pgd.errors", "rs_pgd.defaults", "rs_pgd.config", "rs_pgd.checkpoint", "rs_pgd.runtime", "rs_pgd.grid",
    "rs_pgd.presets", "rs_pgd.raster", "rs_pgd.classes", "rs_pgd.label_source", "rs_pgd.vector_labels",
    "rs_pgd.raster_labels", "rs_pgd.labels", "rs_pgd.metrics", "rs_pgd.stitch", "rs_pgd.output",
    "rs_pgd.evaluation", "rs_pgd.vectorization", "rs_pgd.info", "rs_pgd.preview", "rs_pgd.infer",
    "rs_pgd.onnx_backend", "rs_pgd.onnx_export", "rs_pgd.uncertainty", "rs_pgd.tta", "rs_pgd.suggestion",
    "rs_pgd.cli.main", "rs_pgd.cli.errors", "rs_pgd.cli.options", "rs_pgd.cli.suggest",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{module} imports torch"


def test_the_contract_has_teeth():
    """A module that does use torch is caught by the same check."""
    out = subprocess.run([sys.executable, "-c", "import sys, rs_pgd.pgd; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_api_refuses_bad_predict_input_before_importing_torch(tmp_path):
    """``rs_pgd.predict`` runs its torch-free checks (every output path, the checkpoint header) before torch."""
    scene = Path(__file__).resolve().parents[1] / "rs_pgd" / "data" / "RGB.byte.tif"
    code = ("import sys, rs_pgd\n"
            "from rs_pgd.errors import RsPgdError\n"
            "try:\n"
            f"    rs_pgd.predict({str(tmp_path / 'm.safetensors')!r}, {str(scene)!r}, {str(tmp_path / 'o.tif')!r},\n"
            f"                   preview={str(tmp_path / 'no' / 'p.png')!r})\n"
            "except RsPgdError as exc:\n"
            "    print(type(exc).__name__, 'torch' in sys.modules)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OutputError", "False"], out.stdout + out.stderr


def test_the_api_refuses_bad_suggest_input_before_importing_torch(tmp_path):
    """``rs_pgd.suggest`` checks its options and outputs, then the model and scene, before predict imports torch."""
    scene = Path(__file__).resolve().parents[1] / "rs_pgd" / "data" / "RGB.byte.tif"
    code = ("import sys, rs_pgd\n"
            "from rs_pgd.errors import RsPgdError\n"
            "for kwargs in ({'top': 0}, {'size': 7}, {}):\n"
            "    try:\n"
            f"        rs_pgd.suggest({str(tmp_path / 'm.safetensors')!r}, {str(scene)!r}, {str(tmp_path / 's.gpkg')!r},\n"
            "                       **kwargs)\n"
            "    except RsPgdError as exc:\n"
            "        print(type(exc).__name__, 'torch' in sys.modules)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OptionError", "False", "OptionError", "False", "CheckpointError", "False"], (
        out.stdout + out.stderr)
