"""Synthetic volumes drawn once and reused: ``cached_samples`` draws a set in seeded
batches (``batch_seed``) and keeps it in one ``.npz`` file while its request is unchanged."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def batch_seed(seed: int, done: int) -> int:
    """The seed of the sampling batch that starts at volume ``done`` of a set drawn with ``seed``."""
    return int(seed) * 100_003 + int(done)


def cached_samples(path, sample_fn: Callable[[int, int], tuple], n: int, seed: int, batch_size: int,
                   meta: dict | None = None, progress: bool = True) -> dict:
    """``n`` samples from ``sample_fn(n_batch, seed_batch) -> (images, masks[, raw_conditions[,
    labels[, sequences]]])`` in batches, saved to ``path`` (.npz, atomically) and reused while ``n``,
    ``seed`` and ``meta`` are unchanged. A set kept for fewer volumes with the same seed and
    ``meta``, ending on a batch boundary, is extended rather than drawn again: its batches
    are the ones a fresh draw of ``n`` would start with (``batch_seed``), so only the rest is
    sampled (10 more DDPM volumes cost 10 volumes, not 20). Returns ``{images, masks, conditions (or None),
    labels (sub-region label maps, or None), sequences (N, S, x, y, z) from a generator of
    several sequences, or None), seconds}`` where ``seconds`` is the wall time per volume
    of each batch."""
    import io
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from sbldm.io import atomic_write_bytes

    path = Path(path)
    key = json.dumps({"n": n, "seed": seed, "meta": meta or {}}, sort_keys=True, default=str)
    images, masks, conds, labels, seqs, seconds = [], [], [], [], [], []
    done = 0
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            kept = {"images": z["images"], "masks": z["masks"],
                    "conditions": z["conditions"] if z["conditions"].size else None,
                    "labels": z["labels"] if "labels" in z.files and z["labels"].size else None,
                    "sequences": z["sequences"] if "sequences" in z.files and z["sequences"].size else None,
                    "seconds": z["seconds"].tolist()}
            raw = str(z["key"])
        if raw == key:
            return kept
        stored = json.loads(raw)
        m = int(stored.get("n", 0))
        if {**stored, "n": n} == json.loads(key) and 0 < m < n and m % batch_size == 0:
            images, masks, seconds, done = [kept["images"]], [kept["masks"]], list(kept["seconds"]), m
            conds = [kept["conditions"]] if kept["conditions"] is not None else []
            labels = [kept["labels"]] if kept["labels"] is not None else []
            seqs = [kept["sequences"]] if kept["sequences"] is not None else []
    with tqdm(total=n, initial=done, desc=path.stem, disable=not progress) as bar:
        while done < n:
            # always a whole batch, the last one cut: volume k then answers the same request from the
            # same noise whatever n is (the requests of a batch depend on its size), so a set of n
            # volumes is the first n of any larger one; DDIM and DDPM sets pair volume by volume
            b, keep = batch_size, min(batch_size, n - done)
            t0 = time.perf_counter()
            out = sample_fn(b, batch_seed(seed, done))
            seconds.append((time.perf_counter() - t0) / b)
            images.append(np.asarray(out[0], np.float32)[:keep])
            masks.append(np.asarray(out[1], np.uint8)[:keep])
            if len(out) > 2 and out[2] is not None:
                conds.append(np.asarray(out[2], np.float64)[:keep])
            if len(out) > 3 and out[3] is not None:
                labels.append(np.asarray(out[3], np.uint8)[:keep])
            if len(out) > 4 and out[4] is not None:
                seqs.append(np.asarray(out[4], np.float32)[:keep])
            done += keep
            bar.update(keep)
    result = {"images": np.concatenate(images), "masks": np.concatenate(masks),
              "conditions": np.concatenate(conds) if conds else None,
              "labels": np.concatenate(labels) if labels else None,
              "sequences": np.concatenate(seqs) if seqs else None, "seconds": seconds}
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), images=result["images"], masks=result["masks"],
             conditions=result["conditions"] if result["conditions"] is not None else np.zeros(0),
             labels=result["labels"] if result["labels"] is not None else np.zeros(0, np.uint8),
             sequences=result["sequences"] if result["sequences"] is not None else np.zeros(0, np.float32),
             seconds=np.asarray(seconds))
    atomic_write_bytes(path, buf.getvalue())
    return result
