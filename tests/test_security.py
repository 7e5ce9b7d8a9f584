"""Security: checkpoints never execute code, hostile strings stay data, and the package never spawns a shell."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import rasterio
from test_cli_catalogue import FAST, bad, run_cli

PACKAGE = Path(__file__).resolve().parents[1] / "rs_pgd"
HOSTILE = ['quote "double" \'single\'', "{braces} {0} %s", "$(touch PWNED)", "a; rm -rf / ;", "new\nline"]


def test_payload_pickle_named_safetensors_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    payload = bad.pickle_payload(tmp_path / "payload.safetensors", marker)
    scene = bad.good_scene(tmp_path)
    done = run_cli(["predict", payload, scene, "-o", tmp_path / "out.tif", "--quiet"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: not an rs-pgd checkpoint"), done.stderr
    assert not marker.exists(), "loading the checkpoint ran code"
    assert not (tmp_path / "out.tif").exists()


def test_payload_is_live(tmp_path):
    """Teeth: the same payload does run code when unpickled unsafely."""
    import torch

    marker = tmp_path / "PWNED"
    payload = bad.pickle_payload(tmp_path / "p.pt", marker)
    torch.load(payload, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_crafted_resume_state_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    scene, labels = bad.good_scene(tmp_path), bad.good_labels(tmp_path)
    bad.pickle_payload(tmp_path / "m.resume.pt", marker)
    done = run_cli(["fit", scene, labels, "-o", tmp_path / "m.safetensors", *FAST, "--resume"], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot read the resume state" in lines[0], lines
    assert not marker.exists(), "loading the resume state ran code"


def _strip_labels(folder, names):
    from shapely.geometry import box

    west, south, east, north = bad._bounds()
    width = (east - west) / len(names)
    strips = [box(west + i * width, south, west + (i + 1) * width, north) for i in range(len(names))]
    return bad.write_labels(Path(folder) / "hostile.gpkg", strips, {"weird $(col); \"x\"": list(names)})


@pytest.mark.slow
def test_hostile_class_and_column_names_are_data(tmp_path):
    labels = _strip_labels(tmp_path, HOSTILE)
    scene = bad.good_scene(tmp_path)
    column = 'weird $(col); "x"'
    done = run_cli(["fit", scene, labels, "-o", tmp_path / "m.safetensors", *FAST, "--class-column", column],
                   tmp_path)
    assert done.returncode == 0, done.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["rs_pgd"])
    assert sorted(meta["classes"]["names"]) == sorted(HOSTILE)
    assert meta["config"]["class_column"] == column
    done = run_cli(["predict", tmp_path / "m.safetensors", scene, "-o", tmp_path / "out.tif", "--quiet",
                    "--workers", "0"], tmp_path)
    assert done.returncode == 0, done.stderr
    with rasterio.open(tmp_path / "out.tif") as ds:
        tag = ds.tags(1).get("CLASS_NAMES") or ds.tags().get("CLASS_NAMES")
    assert tag is not None
    names = json.loads(tag)
    names = list(names.values()) if isinstance(names, dict) else names
    assert sorted(names) == sorted(HOSTILE)
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.glob("*PWNED*"))


SHELL = re.compile(r"\b(subprocess|os\.system|os\.popen|os\.exec\w*|pty\.spawn|shell\s*=\s*True)\b|(?<![\w.])(eval|exec)\(")
NO_SHELL = re.compile(r"\b(os\.system|os\.popen|os\.exec\w*|pty\.spawn|shell\s*=\s*True)\b|(?<![\w.])(eval|exec)\(")
SUBPROCESS_ALLOWED = {
    "qgis/runner.py",  # the QGIS provider runs the rs-pgd CLI (an argument list, no shell): issue 9
    "runtime.py",  # `sysctl -n hw.optional.arm.FEAT_BF16` on macOS, fixed arguments
}


def _code_lines():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        in_docstring = False
        for number, line in enumerate(text.splitlines(), 1):
            quotes = line.count('"""')
            if in_docstring or quotes:
                in_docstring = in_docstring != (quotes % 2 == 1)
                continue  # docstring lines are prose
            yield path.relative_to(PACKAGE).as_posix(), number, line.split("#", 1)[0], line.strip()


def test_package_has_no_shell_or_eval():
    hits = [f"{name}:{number}: {line}" for name, number, code, line in _code_lines() if NO_SHELL.search(code)]
    assert not hits, hits


def test_subprocesses_only_where_allowed():
    hits = {name for name, _, code, _ in _code_lines() if re.search(r"\bsubprocess\b", code)}
    assert hits <= SUBPROCESS_ALLOWED, sorted(hits - SUBPROCESS_ALLOWED)


def test_shell_grep_has_teeth():
    assert SHELL.search("subprocess.run(cmd, shell=True)") and SHELL.search("eval(text)")
    assert not SHELL.search("model.eval()")
