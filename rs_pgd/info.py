"""``describe()``: what rs-pgd sees in a scene and its labels, for ``rs-pgd info``. No torch."""

from __future__ import annotations

import warnings

import numpy as np

from rs_pgd.grid import WindowGrid, suggest_geometry

FILL_NOTE_FRACTION = 0.01
"""Share of pixels holding one candidate fill value in every band above which ``info`` points them out."""
FILL_NOTE_FRACTION_MAX = 0.05
"""The same for the dtype's largest value, which saturated pixels (bright clouds, snow) also hold."""


def describe(scene, labels=None, *, class_column=None, layer=None, bands=None, preset=None, nodata=None,
             tile: int = 1024, model=None) -> dict:
    """Describe ``scene`` (and ``labels``): facts, nodata share, classes with pixel counts, suggested geometry.

    Everything is computed window by window; no scene-sized array is held.

    Parameters
    ----------
    nodata : float, optional
        Fill value the file does not tag (as ``fit --nodata``): counted as nodata.
    model : path, optional
        A checkpoint (or exported ONNX file's checkpoint): run predict's scene check against it, without torch.

    Returns
    -------
    dict
        JSON-ready: ``scene`` (facts), ``nodata_fraction``, ``fill_candidates`` (values such as 0 or the dtype's
        maximum found in every band of valid pixels, with their share), ``preset``, ``bands``, ``suggested``
        (tile, margin, stride, window), ``labels`` (path, classes with pixel counts, overlap, notes) when labels
        are given, ``model`` (``fits``, the bands predict would read, or why it would refuse, and warnings) when a
        model is given, and ``notes`` (plain-English problems and what rs-pgd will do about them).
    """
    from rs_pgd.raster import SceneReader, scene_info
    from rs_pgd.runtime import runtime_report

    info = scene_info(scene)
    reader = SceneReader(scene, bands=bands, preset=preset, nodata=nodata)
    invalid, fills = _scan_validity(reader, tile)
    report = {
        "scene": info.to_dict(),
        "preset": reader.preset.name,
        "bands": list(reader.bands),
        "nodata_fraction": round(invalid, 6),
        "fill_candidates": [{"value": v, "fraction": round(f, 6)} for v, f in fills.items()],
        "suggested": suggest_geometry(info.height, info.width),
        "notes": list(info.problems),
        "runtime": runtime_report(),
    }
    report["notes"] += _fill_notes(fills, reader)
    for band in info.alpha_bands:
        report["notes"].append(f"band {band} is an alpha band: rs-pgd reads it as a validity mask (transparent = "
                               "nodata), not as a model band; if it holds data (e.g. near infrared), clear its alpha "
                               "interpretation: rio edit-info --colorinterp red,green,blue,undefined SCENE")
    if not info.georeferenced:
        report["notes"].append("scene is not properly georeferenced: vector labels cannot be placed on it; "
                               "use a label raster on the same pixel grid")
    if labels is not None:
        report["labels"] = _describe_labels(labels, info, class_column, layer, tile)
    if model is not None:
        report["model"] = _describe_fit(model, info, bands)
    reader.close()
    return report


def _describe_fit(model, info, bands) -> dict:
    """Whether ``predict MODEL SCENE`` would accept the scene: the one scene check of :mod:`rs_pgd.checkpoint`."""
    from rs_pgd.checkpoint import read_header
    from rs_pgd.config import plan_scene
    from rs_pgd.errors import CheckpointError

    meta = read_header(model)  # not a checkpoint: the caller's one-line error
    try:
        plan = plan_scene(meta, info, model, bands)
    except CheckpointError as exc:
        return {"path": str(model), "fits": False, "reason": str(exc), "bands": None, "warnings": []}
    return {"path": str(model), "fits": True, "reason": None, "bands": list(plan.bands),
            "warnings": list(plan.warnings)}


def _scan_validity(reader, tile: int) -> tuple[float, dict]:
    """Share of invalid pixels, and the share of valid pixels that look like fill, per candidate value.

    A candidate (:func:`fill_candidates`) counts when it is in every selected band of a valid pixel, and only if
    such pixels also reach the scene's edge: fill is what lies outside an image's footprint, so it touches the
    border; a dark lake or a saturated cloud in the middle does not.
    """
    grid = WindowGrid(reader.height, reader.width, tile, 0, align=1)
    candidates = fill_candidates(reader.dtype, reader.count)
    invalid = 0
    counts = dict.fromkeys(candidates, 0)
    on_edge = dict.fromkeys(candidates, False)
    for window in grid:
        raw, valid = reader.read_stored(window.bounds)
        invalid += int((~valid).sum())
        edge = _edge_mask(window.bounds, reader.height, reader.width, valid.shape)
        for value in candidates:
            fill = valid & np.all(raw == value, axis=0)
            counts[value] += int(fill.sum())
            on_edge[value] = on_edge[value] or bool((fill & edge).any())
    total = reader.height * reader.width
    return invalid / total, {v: c / total for v, c in counts.items() if c and on_edge[v]}


def _edge_mask(bounds, height: int, width: int, shape) -> np.ndarray:
    """True on the pixels of a (clipped) window that lie on the scene's outermost rows and columns."""
    row0, col0 = max(bounds[0], 0), max(bounds[1], 0)
    rows = np.arange(row0, row0 + shape[0])
    cols = np.arange(col0, col0 + shape[1])
    return ((rows == 0) | (rows == height - 1))[:, None] | ((cols == 0) | (cols == width - 1))[None, :]


def fill_candidates(dtype: str, count: int = 2) -> list:
    """Values that tools write as fill: 0, -9999, and the extremes of an integer dtype.

    With one band, 0 and the largest value are too often real data (a class, dark water, saturation): only
    -9999 and a signed dtype's smallest value remain.
    """
    kind = np.dtype(dtype)
    values = {-9999}
    if count > 1:
        values.add(0)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        if kind.kind == "i":
            values.add(int(info.min))
        if count > 1:
            values.add(int(info.max))
        return sorted(v for v in values if info.min <= v <= info.max)
    return sorted(values)


def _fill_threshold(value, dtype: str) -> float:
    kind = np.dtype(dtype)
    if kind.kind in "iu" and value == np.iinfo(kind).max:
        return FILL_NOTE_FRACTION_MAX
    return FILL_NOTE_FRACTION


def _fill_notes(fills: dict, reader) -> list[str]:
    notes = []
    for value, fraction in fills.items():
        if fraction >= _fill_threshold(value, reader.dtype):
            notes.append(
                f"{100 * fraction:.1f} % of the pixels are {value:g} in every band, reach the scene's edge and are "
                f"not marked as nodata: if they are fill (outside the image), pass --nodata {value:g} to info, fit "
                f"and predict, or tag the file (rio edit-info --nodata {value:g} {reader.path})"
            )
    return notes


def _describe_labels(labels, info, class_column, layer, tile) -> dict:
    from rs_pgd.labels import open_labels

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_labels(labels, info, class_column=class_column, layer=layer)
        counts = source.pixel_counts(tile=tile)
    table = source.classes
    total = info.width * info.height
    labelled = sum(counts.values())
    classes = [
        {"value": int(v), "name": str(n), "pixels": int(counts.get(int(v), 0)),
         "fraction": round(counts.get(int(v), 0) / total, 6)}
        for v, n in zip(table.values, table.names)
    ]
    return {
        "path": str(labels),
        "kind": type(source).__name__.replace("Labels", "").lower(),
        "class_column": getattr(source, "class_column", None),
        "classes": classes,
        "labelled_fraction": round(labelled / total, 6),
        "overlap": round(float(getattr(source, "overlap", np.nan)), 6),
        "notes": list(getattr(source, "report", [])) + [str(w.message) for w in caught],
    }


def format_report(report: dict) -> str:
    """The report of :func:`describe` as aligned text for the terminal."""
    s = report["scene"]
    lines = [
        f"scene        {s['path']}",
        f"size         {s['width']} x {s['height']} pixels, {s['count']} band(s), {', '.join(sorted(set(s['dtypes'])))}",
        f"crs          {s['crs'] or 'none'}",
        f"resolution   {s['res'][0]:g} x {s['res'][1]:g}",
        f"bounds       {', '.join(f'{v:.6g}' for v in s['bounds'])}",
        f"nodata       {s['nodata']}  ({100 * report['nodata_fraction']:.1f} % of pixels invalid)",
        *[f"fill?        {c['value']:g} in every band: {100 * c['fraction']:.1f} % of pixels"
          for c in report.get("fill_candidates", []) if c["fraction"] >= _fill_threshold(c["value"], s["dtype"])],
        f"layout       {'tiled' if s['tiled'] else 'striped'}, blocks {s['block_shapes'][0][0]}x{s['block_shapes'][0][1]}",
        f"preset       {report['preset']}, bands {report['bands']}",
    ]
    cpu = report["runtime"]["cpu_precision"]
    lines.append(f"precision    auto -> {cpu['precision']} on this CPU ({cpu['reason'].removeprefix('auto: ')})")
    g = report["suggested"]
    lines.append(f"suggested    --tile {g['tile']} --margin {g['margin']} (windows of {g['window']} px)")
    labels = report.get("labels")
    if labels:
        lines.append(f"labels       {labels['path']} ({labels['kind']}"
                     + (f", column {labels['class_column']!r}" if labels.get("class_column") else "") + ")")
        lines.append(f"labelled     {100 * labels['labelled_fraction']:.1f} % of the scene; label extent covers "
                     f"{100 * labels['overlap']:.1f} %")
        width = max([len(str(c["name"])) for c in labels["classes"]] + [4])
        for c in labels["classes"]:
            lines.append(f"  {c['value']:>3}  {str(c['name']):<{width}}  {c['pixels']:>12,d} px  {100 * c['fraction']:6.2f} %")
        for note in labels["notes"]:
            lines.append(f"note         {note}")
    fit = report.get("model")
    if fit:
        verdict = f"predict reads bands {fit['bands']}" if fit["fits"] else f"predict would refuse: {fit['reason']}"
        lines.append(f"model        {fit['path']}: {verdict}")
        for warning in fit["warnings"]:
            lines.append(f"warning      {warning}")
    for note in report["notes"]:
        lines.append(f"note         {note}")
    return "\n".join(lines)
