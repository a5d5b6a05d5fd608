"""foldvision.learn.distributed: one fold in several processes (torchrun + DDP), on the CPU with gloo.

Unit tests: the imbalanced draw dealt out to ranks, the validation shards and their ordered gather (also across
two real gloo processes), the NPROC checks. Slow tests: `torchrun --standalone --nproc-per-node=2` on the
digits corpus — rank 1 writes nothing in the run folder (an audit hook in each worker records every file it
opens for writing, renames, deletes or creates there), the OOF has every validation id once and in the right
rows, the score is close to the single-process run's; a NaN on one rank stops both with one line; an
interrupted 2-process fold resumes from last.pt through `--nproc 2`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchsampler import ImbalancedDatasetSampler

from conftest import LEARN, ROOT, Project, run_cli, stage, write_config
from foldvision.campaign.torchrun import parse_nproc
from foldvision.learn import distributed
from foldvision.config import load_config
from foldvision.stages.folds import run as make_folds
from foldvision.learn.distributed import (DistributedImbalancedSampler, ShardSampler, World, interleave,
                                    shard_sampler)
from foldvision.errors import UserError
from foldvision.run import save_run_config


# ---- the samplers ---------------------------------------------------------------------------------------

def shares(kind: str, labels: list[int], size: int, epoch: int) -> list[list[int]]:
    """Each rank's sampler, built as that rank builds it, for one epoch."""
    out = []
    for rank in range(size):
        sampler = shard_sampler(labels, kind, rank, size)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("n, size", [(50, 3), (48, 2), (7, 4)])
def test_the_imbalanced_draw_is_torchsamplers_dealt_out_to_the_ranks(n, size):
    labels = [0] * (n - n // 5) + [1] * (n // 5)
    dealt = shares("imbalanced", labels, size, epoch=1234)
    assert len({len(s) for s in dealt}) == 1, "DDP needs equal shares"
    torch.manual_seed(1234)  # what the single-process loader draws for this epoch seed
    expected = list(ImbalancedDatasetSampler(labels, labels=labels))
    # shares are the draw's positions rank, rank+size, ...: disjoint, and together the whole draw (+ padding)
    together = interleave([np.array(s) for s in dealt], len(dealt[0]) * size)
    assert together[:n].tolist() == expected
    assert together[n:].tolist() == (expected * size)[: len(together) - n]  # padded from the draw's start
    assert shares("imbalanced", labels, size, epoch=1235) != dealt  # a new draw each epoch


def test_the_ranks_draw_torchsamplers_class_balance():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    dealt = shares("imbalanced", labels, 4, epoch=7)
    drawn = Counter(labels[i] for share in dealt for i in share)
    torch.manual_seed(8)
    single = Counter(labels[i] for i in ImbalancedDatasetSampler(labels, labels=labels))
    for c in (0, 1, 2):  # 1/class-count weights: each class about a third of the draw, on 4 ranks as on 1
        assert abs(drawn[c] / sum(drawn.values()) - 1 / 3) < 0.05, drawn
        assert abs(single[c] / sum(single.values()) - 1 / 3) < 0.05, single
    weights = DistributedImbalancedSampler(labels, 0, 4).weights
    assert torch.equal(weights, ImbalancedDatasetSampler(labels, labels=labels).weights)


def test_the_random_shares_cover_a_shuffle_once():
    dealt = shares("random", list(range(10)), 3, epoch=5)
    assert [len(s) for s in dealt] == [4, 4, 4]
    flat = [i for s in dealt for i in s]
    assert set(flat) == set(range(10)) and len(flat) == 12  # two padded repeats
    assert shares("random", list(range(10)), 3, epoch=6) != dealt


def test_validation_shards_are_gathered_back_in_order():
    n, size = 11, 3
    probs = np.random.default_rng(0).random((n, 4))
    dealt = [list(ShardSampler(n, rank, size)) for rank in range(size)]
    assert sorted(i for s in dealt for i in s) == list(range(n))  # every image exactly once, no padding
    gathered = interleave([probs[s] for s in dealt], n)  # each rank predicts its share, in loader order
    np.testing.assert_array_equal(gathered, probs)
    with pytest.raises(ValueError, match="rank 1 predicted"):
        interleave([probs[dealt[0]], probs[dealt[1]][:-1], probs[dealt[2]]], n)


def _gather_worker(rank: int, size: int, store: str, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    world = World(rank, size, rank, "cpu")
    n = 9
    probs = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    mine = list(ShardSampler(n, rank, size))
    gathered = world.gather_rows(lambda: probs[mine], n)

    def diverges_on_rank_1():
        if rank == 1:
            raise UserError("rank 1 diverged")
        return probs[mine]

    try:
        world.gather_rows(diverges_on_rank_1, n)
        error = None
    except UserError as e:
        error = str(e)
    np.save(f"{results}{rank}.npy", gathered)
    Path(f"{results}{rank}.txt").write_text(error or "")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes that import torch: ~9 s on 2 cores
def test_gather_restores_the_order_across_two_gloo_processes(tmp_path):
    torch.multiprocessing.spawn(_gather_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "r")), nprocs=2)
    expected = np.arange(18, dtype=np.float64).reshape(9, 2)
    for rank in (0, 1):  # every rank gets every row, in the original order
        np.testing.assert_array_equal(np.load(tmp_path / f"r{rank}.npy"), expected)
        # an error on rank 1 alone is raised on both, so both stop at the same place
        assert (tmp_path / f"r{rank}.txt").read_text() == "rank 1 diverged"


def _bn_worker(rank: int, size: int, store: str, results: str) -> None:
    """precise_bn on this rank's batches, then pool_bn_stats through gloo's all_reduce (World.sum)."""
    from foldvision.learn.engine import Amp
    from foldvision.learn.recipes import pool_bn_stats, precise_bn

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    world = World(rank, size, rank, "cpu")
    model, batches = _bn_model_and_batches()
    precise_bn(model, batches[rank::size], 10, Amp("off", torch.device("cpu")))
    bn = model[1]
    own = (bn.running_mean.clone(), bn.running_var.clone())
    pool_bn_stats(model, world.sum, world.size)
    torch.save({"own": own, "pooled": (bn.running_mean, bn.running_var)}, f"{results}{rank}.pt")
    torch.distributed.destroy_process_group()


def _bn_model_and_batches():
    """A conv + BatchNorm model and 4 batches whose statistics differ by rank (rank 1's are shifted by 2)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    batches = [(torch.randn(6, 3, 8, 8) * (1 + i) + 2.0 * (i % 2), None) for i in range(4)]
    return model, batches


@pytest.mark.slow  # two processes that import torch: ~9 s on 2 cores
def test_precise_bn_pooled_over_two_gloo_processes_equals_one_process_over_all_batches(tmp_path):
    """train.precise_bn under DDP: each rank re-estimates the BatchNorm statistics on its share, then
    pool_bn_stats sums them through a real all_reduce; every rank must end with what one process computes over
    the batches of both (precise_bn: the plain mean of the batches' means and variances)."""
    from foldvision.learn.engine import Amp
    from foldvision.learn.recipes import precise_bn

    torch.multiprocessing.spawn(_bn_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "r")), nprocs=2)
    model, batches = _bn_model_and_batches()
    precise_bn(model, batches, 10, Amp("off", torch.device("cpu")))
    union = (model[1].running_mean, model[1].running_var)
    ranks = [torch.load(tmp_path / f"r{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert not torch.allclose(ranks[0]["own"][0], ranks[1]["own"][0], atol=0.5)  # the shares differ: pooling matters
    for rank in ranks:
        for pooled, expected in zip(rank["pooled"], union):
            torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


# ---- NPROC checks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["abc", "0", "-1", "2.5", "", "four"])
def test_nproc_must_be_a_positive_integer(text):
    with pytest.raises(UserError, match="whole number from 1 up"):
        parse_nproc(text)


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_more_processes_than_gpus(monkeypatch):
    fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert distributed.check_processes(2, "auto") == "cuda"
    with pytest.raises(UserError, match=r"NPROC=4 processes, but 2 GPUs visible here \(CUDA_VISIBLE_DEVICES=0,1\)"
                                        ": use NPROC=2 or fewer"):
        distributed.check_processes(4, "auto")
    with pytest.raises(UserError, match="each process takes its own GPU"):
        distributed.check_processes(2, "cuda:1")
    assert distributed.check_processes(8, "cpu") == "cpu"  # gloo: no GPU needed


@pytest.fixture
def resolved(tmp_path, digits_corpus, capsys):
    p = Project(tmp_path, digits_corpus)
    code, err = p.folds(capsys)
    assert code == 0, err
    return p


def one_error_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


@pytest.mark.parametrize("nproc", ["abc", "0"])
def test_a_bad_nproc_is_one_line_and_writes_nothing(resolved, capsys, nproc):
    one_error_line(*stage(capsys, "train", str(resolved.run), "--fold", "0", "--nproc", nproc), "NPROC=")
    assert not (resolved.run / "fold0").exists()


def test_nproc_beyond_the_gpus_is_one_line_before_any_process_starts(resolved, capsys, monkeypatch):
    fake_gpus(monkeypatch, 1)
    one_error_line(*stage(capsys, "train", str(resolved.run), "--fold", "0", "--nproc", "2"),
                   "NPROC=2 processes, but 1 GPU visible here")
    assert not (resolved.run / "fold0").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_every_rank_checks_first_and_rank_0_alone_says_so(resolved, capsys, monkeypatch, rank):
    fake_gpus(monkeypatch, 2)  # `torchrun --nproc-per-node=4` run by hand on a 2-GPU machine
    for key, value in {"WORLD_SIZE": "4", "RANK": rank, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)
    code, err = stage(capsys, "train", str(resolved.run), "--fold", "0")
    if rank == "0":
        one_error_line(code, err, "NPROC=4 processes, but 2 GPUs visible here")
    else:
        assert (code, err) == (2, "")
    assert not torch.distributed.is_initialized() and not (resolved.run / "fold0").exists()


# ---- two processes on the digits corpus (slow: each process imports torch and timm, ~6 s on 2 cores) ----

WORKER = r'''
"""A torchrun worker for the tests: `foldvision <argv>`, recording every file this rank writes in the run
folder (an audit hook sees opens for writing, renames, deletes and new folders) and faults on request."""
import os
import sys

run_dir, rank = os.environ["FV_TEST_RUN"], os.environ["RANK"]
log = os.open(os.path.join(os.environ["FV_TEST_LOGS"], f"writes-rank{rank}.log"), os.O_WRONLY | os.O_CREAT)
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def hook(event, args):
    if event == "open":
        paths = [args[0]] if args[2] & WRITE else []
    elif event == "os.rename":
        paths = args[:2]
    elif event in ("os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate", "os.link", "os.symlink"):
        paths = args[:1]
    else:
        return
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(run_dir):
            os.write(log, f"{event}\t{os.fsdecode(path)}\n".encode())


sys.addaudithook(hook)

import foldvision.learn.fold as fold_module  # noqa: E402
import foldvision.stages.train as train  # noqa: E402

if os.environ.get("FV_TEST_NAN_RANK") == rank:  # this rank's loss becomes NaN at its first step
    make_loss = fold_module.create_loss
    fold_module.create_loss = lambda *a: (lambda fn: lambda logits, y: fn(logits, y) * float("nan"))(make_loss(*a))
if os.environ.get("FV_TEST_INTERRUPT_AT"):  # Ctrl-C during this validation (1-based), on every rank
    real_score, calls = train.score, []

    def score(y, probs, *args):
        calls.append(1)
        if len(calls) == int(os.environ["FV_TEST_INTERRUPT_AT"]):
            raise KeyboardInterrupt
        return real_score(y, probs, *args)

    train.score = score

if os.environ.get("FV_TEST_BN_LOG"):  # each pool_bn_stats call: this rank's BatchNorm statistics before and after
    import torch  # noqa: E402

    real_pool, pooled = train.pool_bn_stats, []

    def stats(model):
        return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def pool_bn_stats(model, total, ranks):
        before = stats(model)
        real_pool(model, total, ranks)
        pooled.append({"before": before, "after": stats(model)})
        torch.save(pooled, os.path.join(os.environ["FV_TEST_LOGS"], f"bn-rank{rank}.pt"))

    train.pool_bn_stats = pool_bn_stats

from foldvision.cli import main  # noqa: E402

main(sys.argv[1:])
'''


def torchrun(tmp_path: Path, run: Path, *argv: str, **faults: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=2 worker.py train <run> ...`, workers recording their writes."""
    worker, logs = tmp_path / "worker.py", tmp_path / "logs"
    worker.write_text(WORKER)
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "FV_TEST_RUN": str(run.resolve()), "FV_TEST_LOGS": str(logs), "OMP_NUM_THREADS": "1",
           **{f"FV_TEST_{k.upper()}": v for k, v in faults.items()}}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(worker), "train", str(run), *argv], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


def resolve(tmp_path: Path, corpus: Path, name: str, **sections) -> Path:
    """runs/<name> with its config and folds (in this process: the stages make would run first)."""
    # amp off: fp32 on both sides, so a re-prediction matches the OOF rows to 1e-5 on any CPU
    cfg = load_config(str(write_config(tmp_path / "configs", name, corpus, **{"train": {"amp": "off"}, **sections})))
    run = tmp_path / "runs" / name
    save_run_config(cfg, run)
    make_folds(run)
    return run


def oof_scores(run: Path) -> dict:
    from foldvision.results.metrics import score

    oof = pd.concat([pd.read_csv(run / f"fold{k}" / "oof.csv") for k in (0, 1)])
    classes = [c.removeprefix("prob_") for c in oof.columns if c.startswith("prob_")]
    y = oof["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    return score(y, oof.filter(like="prob_").to_numpy())


def repredict(run: Path, fold: int) -> pd.DataFrame:
    """The fold's validation images predicted again in one process with its best.pt, by id."""
    from foldvision.config import Config
    from foldvision.learn.checkpoint import read_preprocessing
    from foldvision.learn.engine import build_model_for, predict
    from foldvision.learn.loader import create_loader, loader_kwargs
    from foldvision.run import Run, load_run_config

    cfg: Config = load_run_config(run)
    best_pt = run / f"fold{fold}" / "best.pt"
    best = torch.load(best_pt, weights_only=True)
    split = Run(run).read_split()
    val = split.fold == fold
    setup = build_model_for(cfg.model, len(split.classes), cfg.data.channels, device="cpu", amp="off",
                            pretrained=False, weights=best["model"],
                            preprocessing=read_preprocessing(best, best_pt))
    loader = create_loader(Path(cfg.data.dir), np.asarray(split.paths)[val], split.y[val], setup.preprocessing,
                           setup.device, **loader_kwargs(cfg, train=False))
    probs = predict(setup.net, loader, setup.amp, setup.device)
    return pd.DataFrame(probs, index=[i for i, v in zip(split.ids, val) if v])


def accuracy(run: Path) -> float:
    """OOF accuracy of both folds (chance on the digits: 0.1)."""
    return oof_scores(run)["accuracy"]


# Both runs must learn (LEARN: test_resnet, 3 epochs, 80 train images per fold) and learn alike. Two processes of
# batch 16 at lr 0.01 train with a global batch of 32 at lr 0.02 (the linear scaling rule): the one-process run
# they are compared with trains at batch 32, lr 0.02, so both take the same 9 steps; only the draw order and
# BatchNorm's per-rank batches differ. Measured (learnable digits, 2 folds, amp off; OOF of both folds): one
# process accuracy 0.644 / log_loss 1.247, two processes 0.619 / 1.334; with every rank trained on rank 0's share
# (a broken shard) two processes fell to 0.500 / 1.534. A broken DDP fails these bounds: an lr scaled wrongly, a
# rank's share dropped or duplicated, precise BN statistics left unpooled (checked exactly below), rows gathered
# into the wrong ids or ranks whose weights drift apart (checked exactly by re-predicting from best.pt).
MIN_ACCURACY, ACCURACY_TOLERANCE, LOG_LOSS_TOLERANCE = 0.5, 0.08, 0.2


@pytest.mark.slow
def test_two_processes_rank_1_writes_nothing_and_the_oof_matches_one_process(tmp_path, learnable_digits, capsys):
    run = resolve(tmp_path, learnable_digits, "ddp", **LEARN)
    result = torchrun(tmp_path, run, "--fold", "0", "1", bn_log="1")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert err.count("2 processes × batch 16 = global batch 32: lr 0.01 × 2 = 0.02 (linear scaling rule)") == 1
    assert err.count("fold 0: best accuracy") == 1 and err.count("fold 1: best accuracy") == 1, err  # rank 1 quiet

    writes = {rank: (tmp_path / "logs" / f"writes-rank{rank}.log").read_text() for rank in (0, 1)}
    assert writes[1] == "", writes[1]
    for name in ("best.pt", "history.csv", "oof.csv"):
        assert f"/fold0/{name}\n" in writes[0] and f"/fold1/{name}\n" in writes[0], writes[0]
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    for k in (0, 1):
        assert sorted(p.name for p in (run / f"fold{k}").iterdir()) == ["best.pt", "history.csv", "oof.csv"]
        oof = pd.read_csv(run / f"fold{k}" / "oof.csv", dtype={"id": str})
        assert oof["id"].is_unique and sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == k, "id"])
        assert (oof["fold"] == k).all()
        # each row is the probabilities of its own id (the gather put every rank's rows back in place)
        again = repredict(run, k).loc[oof["id"]].to_numpy()
        np.testing.assert_allclose(oof.filter(like="prob_").to_numpy(), again, atol=1e-5)
    assert pd.read_csv(run / "fold0" / "history.csv")["epoch"].tolist() == [1, 2, 3]
    check_pooled_bn_stats(tmp_path / "logs", calls=2 * 3)

    single = resolve(tmp_path, learnable_digits, "single",
                     **{**LEARN, "train": {**LEARN["train"], "batch_size": 32, "lr": 0.02}})
    code, out = stage(capsys, "train", str(single), "--fold", "0", "1")
    assert code == 0, out
    one, two = oof_scores(single), oof_scores(run)
    print(f"one process: {one}\ntwo processes: {two}")
    assert one["accuracy"] > MIN_ACCURACY and two["accuracy"] > MIN_ACCURACY  # both learnt (chance: 0.1)
    assert abs(one["accuracy"] - two["accuracy"]) <= ACCURACY_TOLERANCE
    assert abs(one["log_loss"] - two["log_loss"]) <= LOG_LOSS_TOLERANCE


def check_pooled_bn_stats(logs: Path, calls: int) -> None:
    """train.precise_bn under DDP (test_resnet has BatchNorm): at each validation both ranks' statistics were
    pooled through gloo's all_reduce into the same values, the mean of what each rank estimated on its share."""
    ranks = [torch.load(logs / f"bn-rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == calls  # one per epoch and fold
    for zero, one in zip(*ranks):
        assert len(zero["after"]) > 0
        differed = False
        for (m0, v0), (m1, v1), (pm0, pv0), (pm1, pv1) in zip(zero["before"], one["before"], zero["after"],
                                                             one["after"]):
            assert torch.equal(pm0, pm1) and torch.equal(pv0, pv1)  # every rank validates alike
            torch.testing.assert_close(pm0, (m0 + m1) / 2)
            torch.testing.assert_close(pv0, (v0 + v1) / 2)
            differed |= not torch.allclose(m0, m1)
        assert differed  # the shares' statistics differed: the pooling changed something


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both_with_one_line(tmp_path, digits_corpus):
    run = resolve(tmp_path, digits_corpus, "nan")
    result = torchrun(tmp_path, run, "--fold", "0", nan_rank="1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0
    assert len(errors) == 1 and "the training loss is nan at step 1 of 1" in errors[0], result.stderr
    assert not (run / "fold0" / "best.pt").exists() and not (run / "fold0" / "oof.csv").exists()


@pytest.mark.slow
def test_an_interrupted_two_process_fold_resumes_from_last_pt(tmp_path, digits_corpus):
    run = resolve(tmp_path, digits_corpus, "resume", train={"amp": "off", "epochs": 2})
    cut = torchrun(tmp_path, run, "--fold", "0", interrupt_at="2")  # Ctrl-C in epoch 2's validation
    assert cut.returncode != 0 and "interrupted" in cut.stderr, cut.stderr
    assert (run / "fold0" / "last.pt").is_file() and not (run / "fold0" / "oof.csv").exists()

    result = run_cli("train", str(run), "--fold", "0", "--nproc", "2")  # as `NPROC=2 make train` runs it
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("fold 0: resuming after epoch 1") == 1, result.stderr  # every rank, said once
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert pd.read_csv(run / "fold0" / "history.csv")["epoch"].tolist() == [1, 2]
    assert (run / "fold0" / "oof.csv").is_file() and not (run / "fold0" / "last.pt").exists()
