"""Which modules may import torch: the one list of the house rule, checked module by module.

Every module below is imported alone in a fresh interpreter, so one that pulls torch in is named. ``rio`` imports
every plugin at start-up, so ``rs_pgd`` and ``rs_pgd.cli.main`` are on the list too.
"""

import subprocess
import sys

import pytest

TORCH_FREE = [
    "rs_pgd", "rs_pgd.api", "rs_pgd.errors", "rs_pgd.defaults", "rs_pgd.config", "rs_pgd.runtime", "rs_pgd.grid",
    "rs_pgd.presets", "rs_pgd.raster", "rs_pgd.classes", "rs_pgd.label_source", "rs_pgd.vector_labels",
    "rs_pgd.raster_labels", "rs_pgd.labels", "rs_pgd.metrics", "rs_pgd.stitch", "rs_pgd.output",
    "rs_pgd.evaluation", "rs_pgd.vectorization", "rs_pgd.info", "rs_pgd.preview", "rs_pgd.infer",
    "rs_pgd.onnx_backend", "rs_pgd.onnx_export",
    "rs_pgd.cli.main", "rs_pgd.cli.errors", "rs_pgd.cli.options",
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
