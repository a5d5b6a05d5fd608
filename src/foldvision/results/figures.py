"""Pictures of a scored experiment, as PNG files: what its numbers look like, and where it goes wrong
(`foldvision plots` and the report page draw them through `write_plots`).

Reads the run folder (config, scores, OOF table, split and every fold's history, through `foldvision.run`) and
writes one PNG per plot into its plots folder (`Run.plot_png`): learning_curves (loss, task metric and
learning rate per epoch, train and validation, one colour per fold), confusion (OOF counts and
row-normalised), roc (binary: the positive class; multi-class: one-vs-rest per class), per_class (OOF
precision/recall, error bars the std over folds) and wrong (the most confidently wrong OOF images with true
and predicted labels). Each task kind draws what reads it: single-label all of these; multi-label per_class
(per tag, with F1) and cooccurrence (how often two tags are true together); ordinal confusion (of the rounded
grade) and per_class (per grade); regression scatter (predicted against true, and the residuals). Every kind
draws label_issues (the most suspect labels) once `foldvision label-issues` has ranked them. `make report` puts
them on one page.

Figures are built with matplotlib's object API on the Agg canvas: no display, no pyplot state, safe on a
server and in CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from foldvision.corpus import open_image
from foldvision.files import write_atomic
from foldvision.run import Predictions, Run

PLOTS = ("learning_curves", "confusion", "roc", "per_class", "wrong")  # a single-label experiment's plots
KIND_PLOTS = ("cooccurrence", "scatter")  # multi-label's and regression's own (shown after per_class)
MAX_LABELLED_CLASSES = 20  # beyond this, tick labels and cell values are unreadable: left out


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def learning_curves(histories: dict[int, pl.DataFrame], metric: str) -> Figure:
    """Loss, the task metric and the learning rate per epoch; solid train, dashed validation, a colour per fold.

    The loss panel compares log loss on both sides when the history has it (the training objective, e.g.
    Complement Cross Entropy, is on another scale and goes below zero).
    """
    fig = _figure(13, 4)
    axes = fig.subplots(1, 3)
    for k, history in sorted(histories.items()):
        colour = f"C{k % 10}"
        train_loss = "train_log_loss" if "train_log_loss" in history else "train_loss"
        panels = ((train_loss, "val_loss"), (f"train_{metric}", f"val_{metric}"), ("lr", None))
        for ax, (train_col, val_col) in zip(axes, panels):
            if train_col in history:
                ax.plot(history["epoch"], history[train_col], "o-", color=colour, ms=4)
            if val_col and val_col in history:
                ax.plot(history["epoch"], history[val_col], "s--", color=colour, ms=4)
    last = max((int(h["epoch"].max()) for h in histories.values() if len(h)), default=1)
    for ax, title in zip(axes, ("log loss", metric, "learning rate (end of epoch)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)  # one or two epochs still get an epoch axis, not 0.95..1.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{k % 10}", lw=2, label=f"fold {k}") for k in sorted(histories)]
    handles += [Line2D([], [], color="grey", ls="-", marker="o", label="train"),
                Line2D([], [], color="grey", ls="--", marker="s", label="validation")]
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    return fig


def confusion(matrix: np.ndarray, classes: list[str]) -> Figure:
    """The OOF confusion matrix twice: counts, and each true class's row as fractions (its recall spread)."""
    matrix = np.asarray(matrix)
    side = max(4.5, 0.45 * len(classes))
    fig = _figure(2 * side + 1, side)
    counts_ax, norm_ax = fig.subplots(1, 2)
    labelled = len(classes) <= MAX_LABELLED_CLASSES
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    for ax, values, fmt, title in ((counts_ax, matrix, "d", "counts"),
                                   (norm_ax, normalised, ".2f", "row-normalised")):
        ConfusionMatrixDisplay(values, display_labels=classes if labelled else None).plot(
            ax=ax, colorbar=False, cmap="Blues", values_format=fmt, include_values=labelled,
            xticks_rotation=45 if len(classes) > 4 else "horizontal")
        ax.set_title(f"OOF confusion matrix: {title}")
    return fig


def roc(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> Figure:
    """ROC with its AUC: the positive (last) class for binary, one curve per class (one-vs-rest) otherwise."""
    fig = _figure(5.5, 5)
    ax = fig.subplots()
    if len(classes) == 2:
        RocCurveDisplay.from_predictions(y, probs[:, 1], pos_label=1, name=f"{classes[1]} vs {classes[0]}",
                                         ax=ax, plot_chance_level=True)
        ax.set_title("OOF ROC curve")
    else:
        for i, name in enumerate(classes):
            RocCurveDisplay.from_predictions(y == i, probs[:, i], name=str(name), ax=ax,
                                             plot_chance_level=i == len(classes) - 1)
        if len(classes) > MAX_LABELLED_CLASSES:
            ax.get_legend().remove()
        ax.set_title("OOF ROC curves, one class vs the rest")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    return fig


def per_class_bars(per_class: dict) -> Figure:
    """OOF precision and recall per class; error bars: the standard deviation over folds."""
    names = list(per_class)
    x = np.arange(len(names))
    fig = _figure(max(6, 0.6 * len(names) + 2), 4.5)
    ax = fig.subplots()
    stats = [s for s in ("precision", "recall", "f1") if s in per_class[names[0]]] if names else []
    width = 0.8 / max(1, len(stats))
    for i, stat in enumerate(stats):
        ax.bar(x + (i - (len(stats) - 1) / 2) * width, [per_class[n][stat] for n in names], width, label=stat,
               yerr=[per_class[n][f"{stat}_std"] for n in names], capsize=3)
    ax.set_xticks(x, [f"{n}\n(n={per_class[n]['support']})" for n in names] if len(names) <= MAX_LABELLED_CLASSES
                  else [""] * len(names))
    ax.set_ylim(0, 1.05)
    ax.set_title("per class, OOF (error bars: std over folds)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def cooccurrence(matrix: np.ndarray, tags: list[str]) -> Figure:
    """Multi-label: how many images hold both tags (the diagonal: each tag's images), and each row as the share
    of that tag's images that also hold the column's tag."""
    matrix = np.asarray(matrix)
    side = max(4.5, 0.45 * len(tags))
    fig = _figure(2 * side + 1, side)
    labelled = len(tags) <= MAX_LABELLED_CLASSES
    diagonal = np.diag(matrix)[:, None]
    shares = np.divide(matrix, diagonal, out=np.zeros(matrix.shape), where=diagonal > 0)
    for ax, values, fmt, title in zip(fig.subplots(1, 2), (matrix, shares), ("d", ".2f"),
                                      ("images with both tags", "share of the row tag's images")):
        ConfusionMatrixDisplay(values, display_labels=tags if labelled else None).plot(
            ax=ax, colorbar=False, cmap="Greens", values_format=fmt, include_values=labelled,
            xticks_rotation=45 if len(tags) > 4 else "horizontal")
        ax.set_title(f"tag co-occurrence (true tags): {title}")
        ax.set_xlabel("tag")
        ax.set_ylabel("tag")
    return fig


def predicted_vs_true(y: np.ndarray, pred: np.ndarray, name: str) -> Figure:
    """Regression (and ordinal's expected grade): OOF predictions against the truth, with the diagonal, and the
    residuals (prediction - truth) against the truth: bias where they drift from 0."""
    fig = _figure(11, 4.8)
    scatter_ax, residual_ax = fig.subplots(1, 2)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    scatter_ax.scatter(y, pred, s=8, alpha=0.5)
    scatter_ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, label="prediction = truth")
    scatter_ax.set_xlabel(f"true {name}")
    scatter_ax.set_ylabel(f"predicted {name} (OOF)")
    scatter_ax.set_title("OOF predictions against the truth")
    scatter_ax.legend(loc="upper left")
    residual_ax.scatter(y, pred - y, s=8, alpha=0.5)
    residual_ax.axhline(0, color="grey", ls="--", lw=1)
    residual_ax.set_xlabel(f"true {name}")
    residual_ax.set_ylabel("residual (prediction - truth)")
    residual_ax.set_title("OOF residuals")
    for ax in (scatter_ax, residual_ax):
        ax.grid(alpha=0.3)
    return fig


def most_wrong(oof: Predictions, n: int = 12) -> pl.DataFrame:
    """The `n` wrong OOF predictions made with the highest confidence: id, fold, label, pred, confidence,
    p_true (the probability given to the true class)."""
    probs, truth = oof.probs, oof.y
    pred = probs.argmax(axis=1)
    table = pl.DataFrame({"id": oof.ids, "fold": oof.fold, "label": oof.labels,
                          "pred": [oof.classes[i] for i in pred], "confidence": probs.max(axis=1),
                          "p_true": probs[np.arange(len(probs)), truth]})
    wrong = table.filter(pl.Series(pred != truth)).sort(["confidence", "id"], descending=[True, False])
    return wrong.head(n)


def image_file(data_dir: Path, train_images: str | None, rel: str) -> Path | None:
    """A split path (`Split.paths`) on disk: relative to the corpus folder, or to its training image folder."""
    for candidate in (data_dir / rel, data_dir / (train_images or "train") / rel):
        if candidate.is_file():
            return candidate
    return None


def wrong_images(wrong: pl.DataFrame, files: list[Path | None], columns: int = 4, thumb: int = 224) -> Figure:
    """A grid of the images in `wrong` (rows of `most_wrong`), each titled with its true and predicted label."""
    rows = max(1, -(-len(wrong) // columns))
    fig = _figure(3 * columns, 3.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    if wrong.is_empty():
        axes[0].text(0.5, 0.5, "no wrong OOF predictions", ha="center", va="center")
    for ax, row, path in zip(axes, wrong.iter_rows(named=True), files):
        if path is None:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center")
        else:
            with open_image(path) as image:
                picture = image.convert("RGB")
            picture.thumbnail((thumb, thumb))
            ax.imshow(np.asarray(picture))
        ax.set_title(f"true {row['label']} · pred {row['pred']} ({row['confidence']:.2f})\n{row['id']}", fontsize=9)
    return fig


def save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def image_rows(rows: list[list[tuple[Path | None, str]]], columns: int = 6, thumb: int = 160) -> Figure:
    """A grid of thumbnails, one row per list of (file, title): the near-duplicate clusters, one per row."""
    fig = _figure(2.2 * columns, 2.8 * max(1, len(rows)))
    axes = np.atleast_2d(fig.subplots(max(1, len(rows)), columns))
    for ax in axes.ravel():
        ax.set_axis_off()
    for row_axes, row in zip(axes, rows):
        for ax, (path, title) in zip(row_axes, row[:columns]):
            if path is not None:
                with open_image(path) as image:
                    picture = image.convert("RGB")
                picture.thumbnail((thumb, thumb))
                ax.imshow(np.asarray(picture))
            ax.set_title(title, fontsize=8)
    return fig


def near_duplicate_rows(cfg, split, n_clusters: int = 6) -> list[list[tuple[Path | None, str]]] | None:
    """The largest near-duplicate clusters of the split as thumbnail rows, when every image's hashes are cached
    (by `make check` or a grouped split); None otherwise: the report renders, it does not decode the corpus."""
    from foldvision import duplicates  # noqa: PLC0415 - imagehash only for this plot

    root = Path(cfg.data.dir)
    found = duplicates.corpus_hashes(cfg, [root / p for p in split.paths], compute=False)
    if found is None:
        return None
    pairs = duplicates.near_pairs(found[0], None, cfg.cv.near_duplicate_distance, cfg.cv.near_duplicate_confirm,
                                  found[1])
    return [[(image_file(root, cfg.data.train_images, split.paths[i]),
              f"{split.ids[i]}\n{split.labels[i]} · fold {split.fold[i]}") for i in rows]
            for rows in duplicates.clusters(len(split.ids), pairs)[:n_clusters]]


def label_issue_images(run: Run, oof: Predictions, files_of, n: int = 12) -> Figure | None:
    """The most suspect labels of label_issues.csv (`foldvision label-issues`), as `wrong_images` shows them:
    with the probability of the predicted class (single-label), the lowest probability of a given tag state
    (multi-label) or the residual (regression, ordinal) in brackets; None when the command has not been run."""
    if not run.label_issues_csv.is_file():
        return None
    issues = pl.read_csv(run.label_issues_csv, infer_schema=False).head(n)
    if oof.kind == "single":
        confidence = dict(zip(oof.ids, oof.probs.max(axis=1)))
        shown = [float(confidence.get(i, np.nan)) for i in issues["id"]]
    else:
        shown = issues["residual" if oof.task.is_value else "self_confidence"].cast(pl.Float64).to_list()
    frame = pl.DataFrame({"id": issues["id"], "label": issues["given_label"], "pred": issues["predicted_label"],
                          "confidence": shown})
    frame = frame.with_columns(pl.col("label", "pred").fill_null("").replace("", "no tag"))  # an empty tag set
    return wrong_images(frame, files_of(frame["id"].to_list()))


def kind_figures(scores: dict, oof: Predictions) -> dict[str, Figure]:
    """The figures of the task kind's view beside the learning curves (see the module's docstring)."""
    kind = oof.kind
    if kind == "regression":
        return {"scatter": predicted_vs_true(oof.y, oof.probs[:, 0], oof.classes[0])}
    figures = {"per_class": per_class_bars(scores["per_class"])}
    if kind == "multilabel":
        figures["cooccurrence"] = cooccurrence(np.array(scores["cooccurrence"]), oof.classes)
    else:
        figures["confusion"] = confusion(np.array(scores["confusion_matrix"]), oof.classes)
    if kind == "single":
        figures["roc"] = roc(oof.y, oof.probs, oof.classes)
    return figures


def write_plots(run_dir: Path, n_wrong: int = 12) -> dict[str, Path]:
    """Every plot of a scored experiment into the run's plots folder; returns name -> PNG path."""
    run = Run(run_dir)
    scores = run.read_scores()  # first: an unscored run is told to train and score it
    oof, split, cfg = run.read_oof(), run.read_split(), run.load_config()
    paths = dict(zip(split.ids, split.paths))

    def files_of(ids: list[str]) -> list[Path | None]:
        return [image_file(Path(cfg.data.dir), cfg.data.train_images, paths[i]) if i in paths else None for i in ids]

    figures = {"learning_curves": learning_curves(run.read_histories(), scores["metric"]),
               **kind_figures(scores, oof)}
    if oof.kind == "single":  # argmax and the probability of the true class: single-label's
        wrong = most_wrong(oof, n_wrong)
        figures["wrong"] = wrong_images(wrong, files_of(wrong["id"].to_list()))
    figures["label_issues"] = label_issue_images(run, oof, files_of)
    clusters = near_duplicate_rows(cfg, split)
    figures["near_duplicates"] = image_rows(clusters) if clusters else None
    order = [*PLOTS[:-1], *KIND_PLOTS, "wrong", "label_issues", "near_duplicates"]
    return {name: save(figures[name], run.plot_png(name)) for name in order
            if name in figures and figures[name] is not None}
