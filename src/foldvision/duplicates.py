"""Near-duplicate images: perceptual hashes, the pairs within a Hamming distance, and their clusters (torch-free).

    foldvision check <exp>                                  lists the clusters (make check EXP=<exp>)
    foldvision config <exp> cv.near_duplicates=group        each cluster one group of the corpus split

A copy resized or recompressed keeps its low-frequency structure, so its `imagehash.phash` (a 64-bit DCT
hash) is a few bits from the original's. A mirrored copy is a few bits from the hash of the original's mirror.
A crop shifts the structure against the DCT's grid: 3% off each side already moves a phash by ~12 bits
(benchmarks/RESULTS.md), as far as unrelated images come; the hash of the original's centre (CROP off each side)
is a few bits from the copy's for crops of 0-5% a side (7% is lost: benchmarks/RESULTS.md). So each image
keeps four hashes (as is, mirrored, centre, centre mirrored) and a pair's distance is the smallest of the
comparisons in `COMPARE`. Unrelated images differ in about 32 bits.

64 bits say only that two pictures share their coarse layout, and in aligned corpora different images do: two
chest X-rays of different patients are often 2 bits apart. So the 64-bit hashes find the candidates (every pair
compared, fast) and a 256-bit phash (`FINE_SIZE`, the 16×16 lowest frequencies) confirms each one: copies stay
within ~40 of its 256 bits (crops of up to 5% a side included) while those look-alike X-rays are 60 to 80 apart
(benchmarks/RESULTS.md). `cv.near_duplicate_distance` is the first radius, `cv.near_duplicate_confirm` the
second.

The hashes are cached by image content, beside the run's content stamps (`run.stamps_json`):
`<data.cache_dir>/<corpus>/phash.json` maps each file's content digest (the stamps' sha1, 16 hex digits) to
its eight hashes, so a renamed or copied file is not decoded again and a replaced one is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import scipy.sparse
from PIL import Image, ImageOps
from scipy.sparse.csgraph import connected_components

from foldvision.corpus import open_image
from foldvision.files import write_text_atomic
from foldvision.run import ContentHashes, stamps_json

CACHE_VERSION = 2  # bump when the hashes change (the hash function, its size, the variants): old entries go
CROP = 0.04  # the centre variant drops this fraction of each side: crops of 0 to 5% a side then match
PLAIN, MIRROR, CENTRE, CENTRE_MIRROR = range(4)  # the variants, in this order in a hash row
VARIANTS = 4
FINE_SIZE = 16  # the confirming phash: 16x16 bits, 4 uint64 words per variant
FINE_BITS = FINE_SIZE * FINE_SIZE
FINE_WORDS = FINE_BITS // 64
# (this image's variant, the other's): a copy that is mirrored, cropped (the crop is the smaller picture, so its
# plain hash meets the original's centre), or both, meets one of these; symmetric, so each unordered pair once
COMPARE = ((PLAIN, PLAIN), (PLAIN, MIRROR), (PLAIN, CENTRE), (PLAIN, CENTRE_MIRROR), (CENTRE, PLAIN),
           (CENTRE, MIRROR))
# Rows × columns compared at once: 512 × 8192 XORs are 32 MB of uint64, small next to any machine, large
# enough that numpy's per-call overhead vanishes.
BLOCK_ROWS, BLOCK_COLS = 512, 8192


def _as_int(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.flatten()).tobytes(), "big")


def hash_image(image: Image.Image) -> tuple[int, ...]:
    """phash of an (upright) image as is, mirrored left-right, its centre, its centre mirrored: four 64-bit
    integers, then the same four variants' 256-bit phashes (FINE_SIZE)."""
    w, h = image.size
    dx, dy = round(w * CROP), round(h * CROP)
    centre = image.crop((dx, dy, w - dx, h - dy))
    variants = (image, image.transpose(Image.FLIP_LEFT_RIGHT), centre, centre.transpose(Image.FLIP_LEFT_RIGHT))
    return (*(_as_int(imagehash.phash(im)) for im in variants),
            *(_as_int(imagehash.phash(im, hash_size=FINE_SIZE)) for im in variants))


def hash_file(path: Path) -> tuple[int, ...] | None:
    """The hashes of an image file (`hash_image`); None when it cannot be decoded (check reports those on its own)."""
    try:
        with open_image(path) as im:
            return hash_image(ImageOps.exif_transpose(im))
    except Exception:  # noqa: BLE001 - any decoder failure: not comparable, reported elsewhere
        return None


class HashCache:
    """Content digest -> its eight hashes (`hash_image`), in `<folder>/phash.json` (None: nothing kept). Entries
    are only added, so the train and test images of a corpus share it; an unreadable cache costs only time."""

    def __init__(self, folder: Path | None):
        self.path = folder / "phash.json" if folder is not None else None
        self.entries: dict[str, list[str]] = {}
        self.added = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and data.get("version") == _version():
            self.entries = data.get("hashes") or {}

    def get(self, digest: str | None) -> tuple[int, ...] | None:
        entry = self.entries.get(digest) if digest else None
        return tuple(int(h, 16) for h in entry) if isinstance(entry, list) and len(entry) == 2 * VARIANTS else None

    def put(self, digest: str | None, pair: tuple[int, ...] | None) -> None:
        if digest and pair is not None:
            digits = [16] * VARIANTS + [FINE_BITS // 4] * VARIANTS  # hex digits of each hash
            self.entries[digest] = [f"{h:0{n}x}" for h, n in zip(pair, digits)]
            self.added = True

    def save(self) -> None:
        if self.path is None or not self.added:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"version": _version(), "hashes": self.entries}))
        except OSError:
            pass  # a read-only cache folder: the hashes are right all the same, only slower to make


def _version() -> str:
    return f"{CACHE_VERSION}-imagehash{imagehash.__version__}"


def file_hashes(paths: list[Path], digests: list[str | None], cache: HashCache, workers: int = 2
                ) -> tuple[np.ndarray, np.ndarray]:
    """(`pack`) each file's hashes, from the cache by content digest or decoded now. The cache is
    saved before returning."""
    pairs = [cache.get(d) for d in digests]
    todo = [i for i, pair in enumerate(pairs) if pair is None]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes and resizes without the GIL
        for i, pair in zip(todo, pool.map(hash_file, [paths[i] for i in todo])):
            pairs[i] = pair
            cache.put(digests[i], pair)
    cache.save()
    return pack(pairs)


def corpus_hashes(cfg, files: list[Path], compute: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """The hashes of a corpus's image files (`pack`), keyed by the content digests that `foldvision config`
    keeps in the run's stamps (no image is read for its digest when they are current). compute=False: only
    from the cache, None when one is missing (the report renders, it never decodes a corpus)."""
    stamps = ContentHashes(stamps_json(cfg))
    digests = [stamps.of(str(f.absolute())) for f in files]
    cache = HashCache(stamps_json(cfg).parent)
    if compute:
        return file_hashes(files, digests, cache)
    pairs = [cache.get(d) for d in digests]
    return pack(pairs) if all(p is not None for p in pairs) else None


def pack(rows: Iterable[tuple[int, ...] | None]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4 + 4·FINE_WORDS) uint64 hashes (`hash_image`'s: the four 64-bit ones, then each fine one as
    FINE_WORDS words) and (n,) bool valid: an image that could not be decoded (None) is in no pair."""
    rows = list(rows)
    words = [(*row[:VARIANTS], *(h >> (64 * w) & (2**64 - 1) for h in row[VARIANTS:] for w in range(FINE_WORDS)))
             if row is not None else (0,) * (VARIANTS + VARIANTS * FINE_WORDS) for row in rows]
    hashes = np.array(words, dtype=np.uint64).reshape(-1, VARIANTS + VARIANTS * FINE_WORDS)
    return hashes, np.array([row is not None for row in rows], dtype=bool)


def near_pairs(a: np.ndarray, b: np.ndarray | None, max_distance: int, confirm_distance: int,
               valid_a: np.ndarray | None = None, valid_b: np.ndarray | None = None) -> np.ndarray:
    """(m, 4) int64 rows (i, j, distance, fine distance): rows i of `a` and j of `b` (or of `a`, i < j, when `b`
    is None; `pack`ed hashes) whose 64-bit hashes are at most `max_distance` bits apart and whose 256-bit ones at
    most `confirm_distance`, each the smallest over the `COMPARE` pairings (mirrored, cropped).

    Every pair's 64-bit hashes are compared, in blocks of XOR + popcount: 100,000 images are 5·10⁹ pairs, a few
    seconds per core at numpy's speed (benchmarks/RESULTS.md). A BK-tree or multi-index hashing would skip most
    pairs, but at the radii that catch crops (8-12 of 64 bits) a BK-tree visits most of its nodes, in Python,
    and multi-index hashing's probe count grows combinatorially; the blocks stay simpler and are fast enough
    for a corpus that fits a competition. Only the candidates' 256-bit hashes are compared.
    """
    same = b is None
    b = a if same else b
    valid_a = np.ones(len(a), bool) if valid_a is None else valid_a
    valid_b = (valid_a if same else np.ones(len(b), bool)) if valid_b is None else valid_b
    found = []
    for i0 in range(0, len(a), BLOCK_ROWS):
        rows = a[i0:i0 + BLOCK_ROWS]
        for j0 in range(i0 if same else 0, len(b), BLOCK_COLS):
            cols = b[j0:j0 + BLOCK_COLS]
            dist = np.full((len(rows), len(cols)), 64, dtype=np.uint8)
            for mine, theirs in COMPARE:
                np.minimum(dist, np.bitwise_count(rows[:, mine, None] ^ cols[None, :, theirs]), out=dist)
            hit = dist <= max_distance
            if same:  # the upper triangle only: each pair once, no image with itself
                hit &= np.arange(j0, j0 + dist.shape[1])[None, :] > np.arange(i0, i0 + dist.shape[0])[:, None]
            i, j = np.nonzero(hit)
            found.append(np.stack([i + i0, j + j0, dist[i, j]], axis=1).astype(np.int64))
    pairs = np.concatenate(found) if found else np.zeros((0, 3), np.int64)
    pairs = pairs[valid_a[pairs[:, 0]] & valid_b[pairs[:, 1]]]
    fine = fine_distance(a[pairs[:, 0]], b[pairs[:, 1]])
    return np.column_stack([pairs, fine])[fine <= confirm_distance]


def fine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, the smallest Hamming distance between the 256-bit hashes of `pack`ed rows over `COMPARE`."""
    def fine(rows: np.ndarray, variant: int) -> np.ndarray:
        start = VARIANTS + variant * FINE_WORDS
        return rows[:, start:start + FINE_WORDS]

    best = np.full(len(a), FINE_BITS, dtype=np.int64)
    for mine, theirs in COMPARE:
        np.minimum(best, np.bitwise_count(fine(a, mine) ^ fine(b, theirs)).sum(axis=1, dtype=np.int64), out=best)
    return best


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """The connected component of each of n nodes joined by `edges` ((m, 2) node pairs): union-find's answer."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def clusters(n: int, pairs: np.ndarray) -> list[list[int]]:
    """The clusters of two or more rows that `pairs` join, largest first (rows in order within each)."""
    label = components(n, pairs[:, :2])
    members: dict[int, list[int]] = {}
    for row in np.unique(pairs[:, :2]):
        members.setdefault(int(label[row]), []).append(int(row))
    return sorted(members.values(), key=lambda rows: (-len(rows), rows[0]))


def too_loose(found: list[list[int]], n: int, n_folds: int) -> str | None:
    """Why the clusters cannot be copies (one holds over 1/K of the images: a fold could not hold it), or None."""
    if found and len(found[0]) * n_folds > n:
        return (f"one near-duplicate cluster holds {len(found[0])} of {n} images: images this alike are not copies; "
                "lower cv.near_duplicate_confirm or cv.near_duplicate_distance (check prints the pairs by distance)")
    return None


def distance_counts(pairs: np.ndarray, fine: bool = False) -> dict[int | str, int]:
    """How many pairs lie at each distance of 64 bits (fine: in each tens of the 256 bits, '40-49'): where
    copies end and look-alikes begin."""
    if not fine:
        values, counts = np.unique(pairs[:, 2], return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))
    values, counts = np.unique(pairs[:, 3] // 10 * 10, return_counts=True)
    return {f"{v}-{v + 9}": c for v, c in zip(values.tolist(), counts.tolist())}


def split_groups(pairs: np.ndarray, user_groups: list[str] | None, n: int) -> list[str]:
    """One group name per row for the fold splitter: the union of the near-duplicate relation and the user's
    group column (two rows share a group when a chain of copies or shared user groups joins them)."""
    edges = [pairs[:, :2]]
    if user_groups is not None:
        first: dict[str, int] = {}
        edges.append(np.array([(first.setdefault(g, i), i) for i, g in enumerate(user_groups)], np.int64))
    label = components(n, np.concatenate(edges))
    return [f"g{k}" for k in label]
