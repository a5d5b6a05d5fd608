"""Decode every image a run will read into the decoded-image cache, once, before the folds fan out.

    python -m foldvision cache runs/<exp>          (make cache EXP=<exp>; make train -j N runs it first)

Under `make -j N` (or GPUS, or a launcher) the folds of a run start side by side; each would find the cache
empty and the first would decode the corpus while the others wait on its lock. This stage fills the cache
first, on every core: the training images at the training preprocessing (`data.cache_size`, if larger), and
the training and test images at the input size the validation and predict passes read. Images already
cached as their files are now are skipped, so it costs a stat per image when there is nothing to do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from foldvision.console import console
from foldvision.corpus import read_test
from foldvision.learn.cache import open_images
from foldvision.learn.engine import progress_bar
from foldvision.learn.loader import build_workers
from foldvision.learn.models import create_model, preprocessing
from foldvision.run import Run


def run(run_dir: Path) -> None:
    run = Run(run_dir)
    cfg = run.load_config()
    if not cfg.data.cache:
        console.print("cache: data.cache is off (images are decoded on every read): nothing to do")
        return
    split = run.read_split()
    # the input size and interpolation come from the model (its weights are not needed for that)
    model = create_model(cfg.model, len(split.classes), cfg.data.channels, pretrained=False)
    spec = preprocessing(model, cfg.model, cfg.data.channels)
    root = Path(cfg.data.dir)
    test = read_test(cfg.data, verify=False)
    test_paths = list(test.table["path"]) if test is not None else []
    jobs: dict[str, tuple] = {}  # one pass per preprocessing: the train one and the input-size one may be one
    for prep, paths in ((spec.at(cfg.data.cache_size or spec.size), split.paths), (spec, split.paths + test_paths)):
        jobs[prep.key] = (prep, list(dict.fromkeys(jobs.get(prep.key, (None, []))[1] + paths)))
    workers = build_workers(cfg.train.num_workers)
    with progress_bar() as progress:
        for prep, paths in jobs.values():
            open_images(cfg.data.cache_dir, root, paths, prep, workers, progress)
            console.print(f"cache: {len(paths)} images at {prep.key} ready")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> holding config.yaml and folds.csv")
    run(parser.parse_args(argv).run_dir)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
