"""Near-duplicates (foldvision.duplicates): resized, recompressed, cropped and mirrored copies are found and an
unrelated image is not; `check` lists the clusters; cv.near_duplicates=group keeps each cluster (joined with the
user's groups) in one fold; the thresholds are checked when the config is resolved."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import Project
from foldvision import duplicates
from foldvision.config import CVConfig, load_config
from foldvision.errors import UserError

SIZE = 96


def scene(seed: int) -> Image.Image:
    """A photo-like image: a 1/f amplitude spectrum (natural images' power law) with random phases, so it has
    structure at every scale the hashes look at (smooth blobs plus noise would have only noise between)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE), indexing="ij"))
    spectrum = rng.normal(size=(3, SIZE, SIZE)) + 1j * rng.normal(size=(3, SIZE, SIZE))
    spectrum[:, f > 0] /= f[f > 0]
    spectrum[:, f == 0] = 0
    field = np.fft.ifft2(spectrum).real
    pixels = (field - field.min()) / np.ptp(field) * 255
    return Image.fromarray(pixels.transpose(1, 2, 0).astype(np.uint8))


def lookalike(seed: int, detail: int) -> Image.Image:
    """scene(seed)'s coarse layout with its own fine detail: DCT terms of index 9-15 (pixel-centred cosines, so
    nothing leaks below), outside the 64-bit phash's 8x8 lowest frequencies and inside the 256-bit one's 16x16,
    as two patients' chest X-rays share their layout and differ in detail."""
    base = np.asarray(scene(seed), dtype=float) * 0.6 + 50  # away from 0 and 255: no clipping
    rng = np.random.default_rng(detail)
    y, x = (np.mgrid[0:SIZE, 0:SIZE] + 0.5) / SIZE
    texture = sum(rng.normal() * np.cos(np.pi * fx * x) * np.cos(np.pi * fy * y)
                  for fx in range(16) for fy in range(16) if max(fx, fy) >= 9)
    pixels = base + (texture / np.abs(texture).max() * 45)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def recompressed(image: Image.Image, quality: int = 30) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


COPIES = {  # name -> what makes it from the original
    "resized": lambda im: im.resize((61, 61), Image.BILINEAR),
    "recompressed": recompressed,
    "cropped": lambda im: im.crop((4, 4, SIZE - 3, SIZE - 3)),  # ~4% off each side
    "flipped": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
}


def test_resized_recompressed_cropped_and_flipped_copies_are_found_and_an_unrelated_image_is_not():
    original = scene(1)
    images = [original, *(make(original) for make in COPIES.values()), *(scene(s) for s in range(2, 12))]
    hashes, valid = duplicates.pack(duplicates.hash_image(im) for im in images)
    limit, confirm = CVConfig().near_duplicate_distance, CVConfig().near_duplicate_confirm  # the defaults find them
    pairs = duplicates.near_pairs(hashes, None, limit, confirm, valid)
    found = duplicates.clusters(len(images), pairs)
    assert found == [[0, 1, 2, 3, 4]], (found, pairs)  # the original and its four copies; no unrelated image
    distance = {int(j): int(d) for i, j, d, _ in pairs if i == 0}
    assert set(distance) == {1, 2, 3, 4} and max(distance.values()) <= limit
    # the mirrored and the cropped copies are found through the mirror and centre hashes: plain ones are far
    assert int(np.bitwise_count(hashes[0, 0] ^ hashes[4, 0])) > limit
    assert int(np.bitwise_count(hashes[0, 0] ^ hashes[3, 0])) > limit
    # a second set compared against the first (test against train) finds the same matches
    across = duplicates.near_pairs(hashes[1:5], hashes[:1], limit, confirm)
    assert sorted(across[:, 0].tolist()) == [0, 1, 2, 3] and set(across[:, 1].tolist()) == {0}


def test_look_alikes_that_share_the_coarse_hash_are_not_confirmed_and_their_copies_are():
    original, others = lookalike(1, 100), [lookalike(1, 200), lookalike(1, 300)]
    images = [original, *others, *(make(original) for make in COPIES.values())]
    hashes, valid = duplicates.pack(duplicates.hash_image(im) for im in images)
    cv = CVConfig()
    candidates = duplicates.near_pairs(hashes, None, cv.near_duplicate_distance, duplicates.FINE_BITS, valid)
    coarse = {(int(i), int(j)): int(d) for i, j, d, _ in candidates}
    assert coarse.get((0, 1), 64) <= 2 and coarse.get((0, 2), 64) <= 2  # alike in 64 bits: candidates
    pairs = duplicates.near_pairs(hashes, None, cv.near_duplicate_distance, cv.near_duplicate_confirm, valid)
    assert duplicates.clusters(len(images), pairs) == [[0, 3, 4, 5, 6]], pairs  # the copies, not the look-alikes
    fine = {(int(i), int(j)): int(f) for i, j, _, f in candidates}
    assert min(fine[0, 1], fine[0, 2]) > 60 and max(fine[0, k] for k in range(3, 7)) <= cv.near_duplicate_confirm
    assert duplicates.fine_distance(hashes[:1], hashes[1:2])[0] == fine[0, 1]


def test_blocks_find_the_same_pairs_as_a_direct_comparison(monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    noise = np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64)  # one bit flipped
    far = np.concatenate([~base, ~base])  # 64 bits from every plain hash
    coarse = np.stack([np.concatenate([base, base ^ noise]), far, far, far], axis=1)
    hashes = np.concatenate([coarse, np.zeros((80, duplicates.VARIANTS * duplicates.FINE_WORDS), np.uint64)], axis=1)
    direct = duplicates.near_pairs(hashes, None, 3, 0)
    monkeypatch.setattr(duplicates, "BLOCK_ROWS", 7)
    monkeypatch.setattr(duplicates, "BLOCK_COLS", 11)
    blocked = duplicates.near_pairs(hashes, None, 3, 0)
    assert sorted(map(tuple, blocked.tolist())) == sorted(map(tuple, direct.tolist()))
    assert sorted((i, j) for i, j, _, _ in direct.tolist()) == [(k, k + 40) for k in range(40)]


def copies_corpus(root, group: bool = False):
    """Two classes of six unrelated scenes each; a_000 has its four copies (a_001..a_004), one a JPEG; test
    image t000 is a resized copy of b_002."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for c, seeds in (("a", range(10, 16)), ("b", range(20, 26))):
        for i, seed in enumerate(seeds):
            image_id = f"{c}_{i:03d}"
            image = scene(seed)
            if c == "a" and 1 <= i <= 4:
                image = list(COPIES.values())[i - 1](scene(10))
            image.save(root / "train" / (f"{image_id}.jpg" if i == 2 and c == "a" else f"{image_id}.png"))
            rows.append((image_id, c))
    table = pd.DataFrame(rows, columns=["image_id", "label"])
    if group:  # the user's groups: a_005 with b_000, and b_001 with the flipped copy a_004
        table["patient"] = [f"p{i}" for i in range(len(table))]
        table.loc[table.image_id.isin(["a_005", "b_000"]), "patient"] = "shared"
        table.loc[table.image_id.isin(["a_004", "b_001"]), "patient"] = "bridge"
    table.to_csv(root / "train.csv", index=False)
    scene(22).resize((70, 70)).save(root / "test" / "t000.png")
    scene(40).save(root / "test" / "t001.png")
    pd.DataFrame({"image_id": ["t000", "t001"], "target": 0.5}).to_csv(root / "sample_submission.csv", index=False)
    return root


def test_check_lists_the_clusters_and_warns_of_near_copies_across_folds_and_in_test(tmp_path, capsys):
    p = Project(tmp_path, copies_corpus(tmp_path / "c"))
    code, report = p.check(capsys)
    assert code == 0, report
    assert ("near-duplicates (phash within 6 of 64 bits and 40 of 256; mirrored, cropped): 1 clusters, 5 train "
            "images") in report
    assert "5: a_000, a_001, a_002, a_003, a_004" in report
    assert "near-duplicate clusters span folds (e.g. a_000" in report  # the plain split cuts the cluster
    assert "leak: 1 test images are near-duplicates of train images (e.g. t000.png ~ b_002" in report
    assert list((tmp_path / "cache").glob("*/phash.json"))  # the hashes are kept by content for the folds stage
    code, report = p.check(capsys, "cv.near_duplicates=group")
    assert "span folds" not in report and "check: 0 errors, 1 warnings" in report, report


def fold_of(p: Project) -> dict[str, int]:
    folds = pd.read_csv(p.run / "folds.csv", dtype={"fold": int})
    return dict(zip(folds["id"], folds["fold"]))


def test_grouping_keeps_every_copy_in_one_fold_and_off_keeps_the_plain_split(tmp_path, capsys):
    p = Project(tmp_path, copies_corpus(tmp_path / "c"))
    code, err = p.folds(capsys)
    assert code == 0, err
    plain = (p.run / "folds.csv").read_bytes()
    assert len({fold_of(p)[f"a_00{i}"] for i in range(5)}) == 2  # off: the copies straddle the folds
    stage_yaml = (p.run / "stage-folds.yaml").read_text()
    assert "near_duplicates: 'off'" in stage_yaml  # the split's make stamp depends on the key

    grouped = Project(tmp_path / "g", p.corpus)
    code, err = grouped.folds(capsys, "cv.near_duplicates=group")
    assert code == 0, err
    assert "1 clusters of near-duplicate images (5 images) are kept in one fold each" in err
    assert len({fold_of(grouped)[f"a_00{i}"] for i in range(5)}) == 1
    assert [f.name for f in (tmp_path / "g" / "folds").glob("*/*.csv")] == ["folds_k2_seed42_neardup6-40.csv"]
    assert (p.run / "folds.csv").read_bytes() == plain
    code, err = p.config(capsys, "cv.near_duplicates=group")  # a run folder with a split keeps it
    assert code == 2 and "holds results for cv.near_duplicates=off" in err


def test_grouping_joins_the_copies_with_the_user_groups(tmp_path, capsys):
    p = Project(tmp_path, copies_corpus(tmp_path / "c", group=True), data={"group_col": "patient"})
    code, err = p.folds(capsys, "cv.near_duplicates=group")
    assert code == 0, err
    folds = fold_of(p)
    # the copies, and b_001 through its user group with the flipped copy: one fold
    assert len({folds[i] for i in ["a_000", "a_001", "a_002", "a_003", "a_004", "b_001"]}) == 1
    assert folds["a_005"] == folds["b_000"]  # the user's own group holds too


def test_a_threshold_that_joins_unrelated_images_is_refused_for_the_split(tmp_path, capsys):
    p = Project(tmp_path, copies_corpus(tmp_path / "c"))
    loose = ("cv.near_duplicate_distance=24", "cv.near_duplicate_confirm=256")  # 256: every candidate confirmed
    code, report = p.check(capsys, *loose)
    assert ("warning: cv.near_duplicate_distance=24, cv.near_duplicate_confirm=256: one near-duplicate cluster "
            "holds") in report
    code, err = p.folds(capsys, "cv.near_duplicates=group", *loose)
    assert code == 2 and "images this alike are not copies; lower cv.near_duplicate_confirm" in err
    assert err.count("error:") == 1 and not (p.run / "folds.csv").exists()


@pytest.mark.parametrize("override, message", [
    ("cv.near_duplicate_distance=40", "cv.near_duplicate_distance=40: a Hamming distance from 0 to 24"),
    ("cv.near_duplicate_distance=-1", "cv.near_duplicate_distance=-1: a Hamming distance from 0 to 24"),
    ("cv.near_duplicate_confirm=257", "cv.near_duplicate_confirm=257: a Hamming distance from 0 to 256"),
    ("cv.near_duplicates=maybe", "'cv.near_duplicates' must be off | group, got 'maybe'"),
])
def test_a_bad_threshold_is_a_one_line_error_when_the_config_is_resolved(tmp_path, override, message):
    Project(tmp_path, tmp_path)
    with pytest.raises(UserError) as e:
        load_config(str(tmp_path / "configs" / "exp.yaml"), [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_grouping_with_a_split_of_your_own_is_refused(tmp_path):
    Project(tmp_path, tmp_path)
    with pytest.raises(UserError, match="data.folds_file is a split of your own"):
        load_config(str(tmp_path / "configs" / "exp.yaml"), ["cv.near_duplicates=group", "data.folds_file=f.csv"])


def test_the_report_shows_cached_clusters_and_label_issues_as_thumbnails(tmp_path, capsys):
    from fakes import scored_run

    from foldvision.commands import check, label_issues
    from foldvision.commands.report import build
    from foldvision.results.figures import PLOTS

    run_dir = scored_run(tmp_path, "exp", copies_corpus(tmp_path / "c"))
    html = build(run_dir)
    assert ">Near-duplicates</h2>" not in html and ">Label issues</h2>" not in html  # nothing cached or ranked
    assert check.run(load_config(str(tmp_path / "configs" / "exp.yaml"))) == 0  # caches the hashes
    label_issues.run(run_dir)
    html = build(run_dir)
    assert ">Near-duplicates</h2>" in html and ">Label issues</h2>" in html
    assert html.count("data:image/png;base64,") == len(PLOTS) + 2
    assert (run_dir / "plots" / "near_duplicates.png").is_file()
