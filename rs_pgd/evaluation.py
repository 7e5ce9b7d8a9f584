"""Score a class map against reference labels, window by window (no torch).

The labels (vector or raster) are read on the prediction's pixel grid with :func:`rs_pgd.labels.open_labels`,
one window at a time; prediction *values* are turned into the labels' class *indices* through the class table
and the pixels are added to a confusion matrix (:func:`rs_pgd.metrics.update_confusion`). No scene-sized array
is ever built.

Which pixels count
------------------
- Pixels without a label (``255`` from the label source: unlabelled, label nodata) are skipped.
- Labelled pixels where the prediction is nodata (masked) are skipped and counted as ``unscored``.
- Labelled pixels whose predicted value is not a class of the labels count as wrong predictions (a false
  negative of the reference class, no false positive of any class); they are reported per reference class in
  ``unmatched`` and their values in ``unmatched_values``.

Which class is which
--------------------
A reference class with a name (a string class, a ``class_id`` + ``class_name`` pair, a ``--mapping`` target) is
matched to the prediction's class of the same name, as stored by ``rs-pgd predict`` (``CLASS_NAMES`` tag or GDAL
category names); its value in the reference file does not matter. A class known only by its number (a label
raster, an integer class column) is matched by value. A named reference class that the prediction does not know
is scored (every pixel of it is wrong) and reported in ``warnings``.
"""

from __future__ import annotations

import json

import numpy as np

from rs_pgd.errors import GridError, LabelError, OutputError

UNMATCHED = "unmatched"


def _value_to_index_lut(classes, unmatched_index: int) -> np.ndarray:
    """Lookup of 65536 entries: predicted value -> class index, ``unmatched_index`` for values not in the table."""
    lut = np.full(65536, unmatched_index, dtype=np.int64)
    for index, value in enumerate(classes.values):
        lut[int(value)] = index
    return lut


def _prediction_indices(data: np.ndarray, lut: np.ndarray, unmatched_index: int) -> np.ndarray:
    """Class index of every predicted value; values outside 0..65535 are unmatched."""
    data = data.astype(np.int64, copy=False)
    inside = (data >= 0) & (data < len(lut))
    return np.where(inside, lut[np.clip(data, 0, len(lut) - 1)], unmatched_index)


def evaluate(prediction, labels, *, class_column=None, layer=None, mapping=None, all_touched=False,
             background=None, tile: int = 1024) -> dict:
    """Confusion matrix and scores of a class map against reference labels.

    Parameters
    ----------
    prediction : path-like
        Single-band integer class map whose pixels are class *values* (as written by ``rs-pgd predict``).
    labels : path-like
        Reference labels, vector or raster; read on the prediction's grid (reprojected if needed).
    class_column, layer, mapping, all_touched, background
        As for :func:`rs_pgd.labels.open_labels` (``mapping`` may be a dict or a JSON file).
    tile : int
        Window side in pixels, at least 1 (bounds memory; the result does not depend on it).

    Returns
    -------
    dict
        ``miou``, ``accuracy``, ``per_class`` (list of ``{index, value, name, iou, f1, precision, recall,
        support}``), ``confusion`` (rows reference, columns predicted, label class order), ``unmatched`` (per
        reference class: pixels predicted with a value that is not a class), ``unmatched_values``, ``classes``
        (the label class table, with the prediction's values for classes matched by name), ``pixels`` (scored), ``unscored`` (labelled pixels where the prediction is
        nodata), ``prediction``, ``labels``, ``warnings``.
    """
    from rasterio.windows import Window

    from rs_pgd.classes import IGNORE_INDEX, open_class_map, read_class_names
    from rs_pgd.grid import WindowGrid
    from rs_pgd.labels import open_labels
    from rs_pgd.raster import scene_info

    if int(tile) < 1:
        raise GridError(f"tile {tile} must be at least 1 pixel; it only bounds memory, e.g. --tile 1024")
    with open_class_map(prediction) as dataset:
        predicted_names = read_class_names(dataset)
    scene = scene_info(prediction)
    source = open_labels(labels, scene, class_column=class_column, mapping=mapping, layer=layer,
                         all_touched=all_touched, background=background)
    classes, index_lut, warnings = match_classes(source.classes, predicted_names)
    k = classes.num_classes
    unmatched_index = k
    lut = _value_to_index_lut(classes, unmatched_index)
    confusion = np.zeros((k + 1, k + 1), dtype=np.int64)
    unmatched_values: set[int] = set()
    unscored = 0
    with open_class_map(prediction) as dataset:
        height, width = dataset.height, dataset.width
        for window in WindowGrid(height, width, int(tile), 0, align=1):
            row_start, col_start, row_stop, col_stop = window.bounds
            row_stop, col_stop = min(row_stop, height), min(col_stop, width)
            reference = index_lut[source.read((row_start, col_start, row_stop, col_stop))]
            labelled = reference != IGNORE_INDEX
            if not labelled.any():
                continue
            read_window = Window(col_start, row_start, col_stop - col_start, row_stop - row_start)
            data = dataset.read(1, window=read_window)
            valid = dataset.read_masks(1, window=read_window) > 0
            unscored += int((labelled & ~valid).sum())
            scored = labelled & valid
            predicted = _prediction_indices(data, lut, unmatched_index)
            unmatched_values.update(int(v) for v in np.unique(data[scored & (predicted == unmatched_index)]))
            reference = np.where(scored, reference, IGNORE_INDEX)
            _update(confusion, reference, predicted)
    names = _display_names(classes, predicted_names)
    result = _result(confusion[:k], names, classes)
    result.update(
        unscored=unscored,
        unmatched_values=sorted(unmatched_values),
        prediction=str(prediction),
        labels=str(labels),
        warnings=warnings,
    )
    return result


def match_classes(classes, predicted_names: dict[int, str]):
    """The reference classes re-valued to the prediction's classes: named ones by name, numbered ones by value.

    Parameters
    ----------
    classes : ClassTable
        The reference labels' classes.
    predicted_names : dict
        ``{value: name}`` stored in the prediction (empty when it names nothing: then every class matches by
        value).

    Returns
    -------
    (ClassTable, numpy.ndarray, list of str)
        The re-valued table; a ``uint8`` lookup of 256 entries from the labels' class index to the new table's
        index (255 stays 255); warnings about reference classes the prediction does not know.
    """
    from rs_pgd.classes import IGNORE_INDEX, sorted_table

    value_of_name = {name: value for value, name in predicted_names.items()}
    new_values, warnings, unknown = [], [], []
    for value, name in zip(classes.values, classes.names):
        if name == str(value) or not predicted_names:
            new_values.append(value)
        elif name in value_of_name:
            new_values.append(value_of_name[name])
        else:
            new_values.append(None)
            unknown.append(name)
    free = (v for v in range(255) if v not in predicted_names and v not in new_values)
    new_values = [next(free) if v is None else v for v in new_values]
    if len(set(new_values)) != len(new_values):
        raise LabelError(
            f"reference classes {list(classes.names)} meet the prediction's classes "
            f"{_named(predicted_names)} twice on one value; give a --mapping to the prediction's class names"
        )
    if unknown:
        warnings.append(
            f"reference classes {unknown} are not classes of the prediction {_named(predicted_names)}; their "
            "pixels count as wrong (map them to the prediction's names with --mapping)"
        )
    table = sorted_table(dict(zip(new_values, classes.names)), dict(zip(new_values, classes.colours)))
    index_lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    index_lut[: classes.num_classes] = [table.values.index(v) for v in new_values]
    return table, index_lut, warnings


def _named(predicted_names: dict[int, str]) -> list[str]:
    return [predicted_names[v] for v in sorted(predicted_names)]


def _update(confusion: np.ndarray, reference: np.ndarray, predicted: np.ndarray) -> None:
    from rs_pgd.metrics import update_confusion

    update_confusion(confusion, reference, predicted)


def _display_names(classes, predicted_names: dict[int, str]) -> list[str]:
    """Label class names; where the labels only number a class (a label raster), the prediction's name."""
    names = []
    for value, name in zip(classes.values, classes.names):
        if name == str(value) and value in predicted_names:
            name = predicted_names[value]
        names.append(name)
    return names


def _result(confusion: np.ndarray, names: list[str], classes) -> dict:
    """Scores of a ``(K, K+1)`` confusion matrix whose last column counts unmatched predictions."""
    from rs_pgd.metrics import scores

    k = confusion.shape[0]
    square = np.vstack([confusion, np.zeros((1, k + 1), dtype=np.int64)])
    result = scores(square, names=[*names, UNMATCHED])
    per_class = result["per_class"][:k]
    for item, value in zip(per_class, classes.values):
        item["value"] = int(value)
    result["miou"] = _miou(confusion)
    result["per_class"] = [
        {key: item[key] for key in ("index", "value", "name", "iou", "f1", "precision", "recall", "support")}
        for item in per_class
    ]
    result["confusion"] = confusion[:, :k].tolist()
    result["unmatched"] = confusion[:, k].tolist()
    result["classes"] = {**classes.to_dict(), "names": list(names)}
    return result


def _miou(confusion: np.ndarray) -> float | None:
    """Mean IoU over the classes present in the reference or the prediction (unmatched column = false negatives)."""
    confusion = confusion.astype(np.float64)
    k = confusion.shape[0]
    tp = np.diag(confusion[:, :k])
    union = confusion.sum(axis=1) + confusion[:, :k].sum(axis=0) - tp
    present = union > 0
    if not present.any():
        return None
    return round(float(np.mean(tp[present] / union[present])), 6)


# ----------------------------------------------------------------------------------------------------------------
# Reports


def format_table(result: dict) -> str:
    """Plain-text report: one row per class, then mIoU, accuracy and pixel counts."""
    def fmt(value):
        return "   -  " if value is None else f"{value:6.4f}"

    width = max([len("class")] + [len(str(c["name"])) for c in result["per_class"]])
    header = f"{'class':<{width}}  value     IoU      F1  precision  recall     support"
    lines = [header, "-" * len(header)]
    for item in result["per_class"]:
        lines.append(
            f"{item['name']:<{width}}  {item['value']:>5}  {fmt(item['iou'])}  {fmt(item['f1'])}     "
            f"{fmt(item['precision'])}  {fmt(item['recall'])}  {item['support']:>10}"
        )
    lines.append("-" * len(header))
    lines.append(f"mIoU      {fmt(result['miou'])}")
    lines.append(f"accuracy  {fmt(result['accuracy'])}")
    lines.append(f"pixels    {result['pixels']} scored, {result['unscored']} labelled but without a prediction")
    unmatched = sum(result.get("unmatched", []))
    if unmatched:
        values = ", ".join(str(v) for v in result.get("unmatched_values", []))
        lines.append(f"unmatched {unmatched} pixels predicted with values that are not label classes ({values})")
    for warning in result.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def confusion_png(result: dict, path) -> str:
    """Draw the row-normalised confusion matrix (recall on the diagonal) with class names into a PNG.

    Parameters
    ----------
    result : dict
        The output of :func:`evaluate`.
    path : path-like
        PNG to write (atomically).

    Returns
    -------
    str
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rs_pgd.output import AtomicOutput

    if not str(path).lower().endswith(".png"):
        raise OutputError(f"confusion matrix file {path} must end in .png; give a .png path")
    confusion = np.asarray(result["confusion"], dtype=np.float64)
    names = [str(item["name"]) for item in result["per_class"]]
    k = len(names)
    totals = confusion.sum(axis=1) + np.asarray(result.get("unmatched", [0] * k), dtype=np.float64)
    normalised = np.divide(confusion, totals[:, None], out=np.zeros_like(confusion), where=totals[:, None] > 0)
    side = max(4.0, 1.0 + 0.6 * k)
    figure = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of reference pixels")
    axes.set_xticks(range(k), labels=names, rotation=45, ha="right")
    axes.set_yticks(range(k), labels=names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    miou = result.get("miou")
    axes.set_title("confusion (row-normalised)" + (f", mIoU {miou:.3f}" if miou is not None else ""))
    if k <= 20:
        for i in range(k):
            for j in range(k):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                axes.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    with AtomicOutput(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    return str(path)


def to_json(result: dict) -> str:
    """The result as indented JSON."""
    return json.dumps(result, indent=2)
