"""Experiment tracking: Weights & Biases, offline unless the user is logged in, or a no-op stand-in.

Offline runs are written into the run folder (`Run.wandb_dir`, runs/<exp>/wandb/) and uploaded later with
`wandb sync runs/<exp>/wandb/offline-run-*`.
Nothing here prompts, blocks or reaches the network unless the user has logged in (or set WANDB_MODE=online).
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any

from foldvision.errors import UserError
from foldvision.results.metrics import decisions
from foldvision.run import Predictions, Run


class NoTracker:
    """Used with `tracking: none`: accepts everything, records nothing."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_oof(self, scores: dict, oof: Predictions) -> None:
        pass

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def finish(self) -> None:
        pass


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb.Settings accepts


def wandb_mode() -> str:
    """The user's WANDB_MODE if set, else online when logged in, else offline.

    wandb reads WANDB_MODE itself too, and fails deep inside its settings on an empty or unknown value: an
    empty one is dropped here (unset), an unknown one is the user's error, named before any training.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and not mode.strip():
        del os.environ["WANDB_MODE"]
        mode = None
    if mode is not None and mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={mode!r} is not a W&B mode ({', '.join(WANDB_MODES)}); "
                        "unset it to run offline unless logged in, or use tracking=none")
    return mode or ("online" if _logged_in() else "offline")


class WandbTracker:
    """One W&B run: `group` = experiment, so the folds and the OOF run of an experiment sit together."""

    def __init__(self, run_dir: Path, name: str, job_type: str, config: dict):
        try:  # late: importing wandb costs a second, and `tracking: none` needs none of it
            import wandb
        except ImportError:  # a machine set up without it (the GPU machine's wheels leave it out)
            raise UserError("tracking=wandb, but wandb is not installed here: pip install wandb, or set "
                            "tracking=none (ARGS=\"tracking=none\")") from None

        folder = Run(run_dir)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "foldvision"),
            group=folder.name,
            job_type=job_type,
            name=name,
            config=config,
            dir=str(folder.wandb_dir.parent),  # wandb writes into <dir>/wandb
            mode=wandb_mode(),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def log_oof(self, scores: dict, oof: Predictions) -> None:
        """The OOF metrics in the summary, the per-fold table, and the task kind's view as W&B tables and plots:
        per class, the confusion matrix and the ROC curve (single-label: the positive class for binary,
        one-vs-rest for multi-class); per tag and the tags' co-occurrence (multi-label); per grade and the
        confusion matrix of the rounded grade (ordinal); predicted against true (regression)."""
        import pandas as pd  # noqa: PLC0415 - the edge where a library wants a DataFrame: wandb.Table's
        import wandb

        self.run.summary.update({f"oof_{k}": v for k, v in scores["oof"].items()})
        logged = {"folds": wandb.Table(dataframe=pd.DataFrame(scores["folds"]))}
        if "per_class" in scores:
            logged["per_class"] = wandb.Table(dataframe=pd.DataFrame(
                [{"class": name, **entry} for name, entry in scores["per_class"].items()]))
        logged |= self._kind_plots(wandb, pd, scores, oof)
        self.run.log(logged)

    @staticmethod
    def _kind_plots(wandb, pd, scores: dict, oof: Predictions) -> dict:
        classes, y, probs = oof.classes, oof.y, oof.probs
        if oof.kind == "multilabel":
            return {"cooccurrence": wandb.Table(dataframe=pd.DataFrame(scores["cooccurrence"], columns=classes,
                                                                       index=classes).reset_index(names="tag"))}
        if oof.kind == "regression":
            table = wandb.Table(dataframe=pd.DataFrame({"true": y, "predicted": probs[:, 0]}))
            return {"predicted_vs_true": wandb.plot.scatter(table, "true", "predicted", title="OOF predicted vs true")}
        if oof.kind == "ordinal":
            grades = decisions(probs, "ordinal", len(classes))
            return {"confusion_matrix": wandb.plot.confusion_matrix(
                y_true=y.tolist(), preds=grades.tolist(), class_names=classes, title="OOF confusion (rounded grade)")}
        return {
            "confusion_matrix": wandb.plot.confusion_matrix(y_true=y.tolist(), preds=probs.argmax(1).tolist(),
                                                            class_names=classes, title="OOF confusion matrix"),
            "roc": wandb.plot.roc_curve(y, probs, labels=classes, title="OOF ROC",
                                        classes_to_plot=[1] if len(classes) == 2 else None),
        }

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        import wandb

        # artifact names allow only letters, digits, '-', '_' and '.'
        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", name), type=kind)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self) -> None:
        self.run.finish()


def create_tracker(kind: str, run_dir: Path, name: str, job_type: str, config: dict) -> NoTracker | WandbTracker:
    if kind == "none":
        return NoTracker()
    return WandbTracker(run_dir, name, job_type, config)
