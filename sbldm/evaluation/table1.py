"""Table 1 and the metrics beyond it (notebook 04): sample every trained generator, score
it, write the table.

``sample_methods`` draws the synthetic volumes of each Table 1 row once and caches them
under ``work/<scale>/samples/`` (notebooks 05 and 06 reuse them); ``table1`` scores them as
the paper did; ``extra_metrics`` adds diversity, realism, mask realism, image-mask
agreement and memorisation; ``adherence`` measures how well SBLDM follows the requested
tumour, with and without classifier-free guidance. ``table1_rows``, ``table1_markdown``
and ``write_table1`` set our numbers beside the paper's (``sbldm.paper``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sbldm import paper
from sbldm.config import Config
from sbldm.evaluation import generation as ev
from sbldm.evaluation.frechet import frechet_distance
from sbldm.evaluation.sample_cache import batch_seed, cached_samples
from sbldm.paths import slug

#: Table 1 rows: (row name, generator key, generate() options from the config)
ROWS = (
    ("3D-LSGAN", "lsgan3d", lambda cfg: {}),
    ("3D-LDM", "ldm3d", lambda cfg: {}),
    ("SBLDM (DDPM)", "sbldm", lambda cfg: {"sampler": "ddpm",
                                           "num_inference_steps": cfg.eval_ddpm_steps or cfg.num_train_timesteps}),
    ("SBLDM (DDIM)", "sbldm", lambda cfg: {"sampler": "ddim", "num_inference_steps": cfg.num_inference_steps,
                                           "eta": cfg.eta}),
)


def load_generators(dirs: dict[str, Path], optional: tuple[str, ...] = ()) -> dict:
    """``{key: generator}`` from ``{key: saved folder}`` (``Session.generator_dirs()``).
    A missing folder is refused, naming it, unless its key is in ``optional``: then that
    generator's rows are left out, with a printed note (e.g. the baselines when a shipped
    pipeline is evaluated without running notebook 03)."""
    from sbldm.generators.registry import load_generator

    gens = {}
    for key, path in dirs.items():
        if not Path(path).exists():
            if key in optional:
                print(f"{key}: no trained model at {path} (notebook 03); its rows are left out")
                continue
            from sbldm.paths import restore_hint

            hint = restore_hint(Path(path).parent) if key == "sbldm" and Path(path).name == "pipeline" else ""
            raise FileNotFoundError(f"{path}: no trained {key} model; run notebooks 02 and 03 first{hint}")
        gens[key] = load_generator(path)
    return gens


def _arrays(out):
    if isinstance(out, tuple):
        return out
    return (out.images, out.masks, getattr(out, "raw_conditions", None), getattr(out, "labels", None),
            getattr(out, "sequences", None))


def _torch_gen(seed: int):
    import torch

    return torch.Generator().manual_seed(int(seed))


def sample_methods(gens: dict, cfg: Config, caches: dict[str, Path], dirs: dict[str, Path],
                   progress: bool = True, rows=None, draw: int | None = None, bf16: bool = False) -> dict:
    """``{row: {"images", "masks", "conditions", "labels", "seconds"}}`` for every Table 1 row whose
    generator is in ``gens`` (and whose name is in ``rows``, when given), cached in the folder
    ``caches[key]`` names for its generator (``Session.sample_dirs()``) and redrawn when the
    model folder in ``dirs`` (where ``gens`` came from) or its files change. ``draw``: the
    noise seed of the set (default ``cfg.seed``, Table 1's set; ``sample_row``); ``bf16``: as
    ``sample_row``."""
    return {row: sample_row(row, gens[key], cfg, caches[key], dirs[key], progress=progress, draw=draw, bf16=bf16)
            for row, key, _ in ROWS if key in gens and (rows is None or row in rows)}


def sample_row(row: str, gen, cfg: Config, cache_dir: Path, model_dir: Path, progress: bool = True,
               draw: int | None = None, n: int | None = None, bf16: bool = False) -> dict:
    """The sample set of one Table 1 row (``ROWS``) drawn from ``gen`` (loaded from
    ``model_dir``), cached in ``cache_dir`` and redrawn when ``model_dir``'s files change.
    ``draw``: the noise seed of the whole set (its batches' seeds, and for SBLDM the
    conditions drawn from the training distribution); ``cfg.seed`` or None is Table 1's set,
    another seed another set of the same generator, cached beside it (``<row>_draw<k>.npz``).
    ``n``: another number of volumes than the preset's (a set of its own, ``<row>_n<n>.npz``;
    its first volumes are the preset set's, the batches having the same seeds).
    ``bf16``: a diffusion generator samples under bf16 autocast on a CPU (``<row>_bf16``; the
    same batch seeds and requested conditions; ``seg_synthetic_bf16``)."""
    import torch

    from sbldm.runtime import cpu_bf16

    key, opts = next((k, o) for r, k, o in ROWS if r == row)
    options = opts(cfg)
    bf16 = bool(bf16) and key != "lsgan3d" and not torch.cuda.is_available()
    default_n = cfg.eval_n_samples_ddpm if options.get("sampler") == "ddpm" else cfg.eval_n_samples
    n = default_n if n is None else int(n)
    draw = cfg.seed if draw is None else int(draw)

    def fn(b, s):
        with cpu_bf16(bf16):
            return _arrays(gen.generate(b, generator=_torch_gen(s), **options))

    stem = slug(row, drop="()-", lower=True)       # "SBLDM (DDIM)" -> sbldm_ddim, "3D-LDM" -> 3dldm
    if draw != cfg.seed:
        stem += f"_draw{draw}"
    if n != default_n:
        stem += f"_n{n}"
    if bf16:
        stem += "_bf16"
    out = cached_samples(Path(cache_dir) / f"{stem}.npz", fn, n, draw, cfg.eval_batch_size,
                         meta={"options": options, "model": str(model_dir), "mtime": _mtime(model_dir),
                               **({"bf16": True} if bf16 else {})},
                         progress=progress)
    if out["conditions"] is None and key == "sbldm":
        out["conditions"] = requested_conditions(gen, n, draw, cfg.eval_batch_size)
    return out


def requested_conditions(gen, n: int, seed: int, batch_size: int) -> np.ndarray:
    """The raw tumour features SBLDM was asked for in ``cached_samples``' batches (same
    batch seeds, conditions drawn from the training distribution as the pipeline draws
    them): for sample sets cached before the requests were stored beside them."""
    out, done = [], 0
    while done < n:                                  # whole batches, the last cut, as cached_samples draws them
        keep = min(batch_size, n - done)
        _, raw = gen.pipeline.prepare_conditions(None, batch_size, _torch_gen(batch_seed(seed, done)))
        out.append(raw[:keep])
        done += keep
    return np.concatenate(out)


def _mtime(path: Path) -> float:
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return max((p.stat().st_mtime for p in files), default=0.0)


def timings(gens: dict, cfg: Config) -> dict:
    """Median wall time per volume of each row (one volume per call). Each generator is
    warmed up once, with its first row; its later rows (SBLDM's DDPM after DDIM) run warm
    (a warm-up volume of DDPM-1000 costs minutes on a CPU and measures nothing new)."""
    out = {}
    warm = set()
    for row, key, opts in sorted(ROWS, key=lambda r: r[2](cfg).get("sampler") == "ddpm"):
        if key not in gens:
            continue
        options = opts(cfg)
        gen = gens[key]
        out[row] = ev.time_per_volume(lambda gen=gen, options=options: gen.generate(1, generator=_torch_gen(0), **options),
                                      repeats=cfg.eval_timing_volumes, warmup=0 if key in warm else 1)
        warm.add(key)
    return {row: out[row] for row, _, _ in ROWS if row in out}


def same_requests(samples: dict, rows=("SBLDM (DDIM)", "SBLDM (DDPM)")) -> None:
    """Refuse sample sets of ``rows`` whose volume k answers another request than the other
    set's volume k (compared over the shorter set; a set without stored conditions passes)."""
    conds = [np.asarray(samples[r]["conditions"], np.float64) for r in rows
             if r in samples and samples[r].get("conditions") is not None]
    if len(conds) == 2:
        n = min(len(conds[0]), len(conds[1]))
        if not np.allclose(conds[0][:n], conds[1][:n]):
            raise ValueError(f"{rows[0]} and {rows[1]} answer different requests volume by volume: draw both with "
                             "the same batch size and seed (delete the kept sample sets in work/<run>/samples to redraw)")


def table1(samples: dict, gens: dict, times: dict, real_train_images, seed: int = 0) -> dict:
    """``{row: {"psnr", "ssim", "params", "time"}}`` as the paper computed them. SBLDM's
    DDIM and DDPM sets are compared volume by volume (``table1_volume_rows``, the DDIM-vs-DDPM
    claim), so they must answer the same requests: refused when their stored conditions
    differ (e.g. one set kept from a run with another batch size)."""
    same_requests(samples)
    key_of = {row: key for row, key, _ in ROWS}
    results = {}
    for row, s in samples.items():
        r = ev.unpaired_psnr_ssim(s["images"], real_train_images, seed=seed)
        params = gens[key_of[row]].num_parameters()
        results[row] = {**r, "params": params["total"] if isinstance(params, dict) else int(params), "time": times[row]}
    return results


def extra_metrics(samples: dict, train, test, segmenter, cfg: Config, features=None) -> list[dict]:
    """One row per method (and the real test split as reference): diversity, realism,
    mask realism, image-mask agreement, memorisation. ``features`` (images -> (N, F))
    defines the Fréchet distance's feature space; default: the segmenter's bottleneck."""
    rows = []
    features = features or segmenter.features
    real_feats = features(train.images)
    train_nearest = ev.nearest_ssim(test.images, train.images)
    entries = {"real (test split)": {"images": test.images, "masks": test.masks}, **samples}
    for name, s in entries.items():
        images, masks = s["images"], s["masks"]
        div = ev.pairwise_ms_ssim(images, max_volumes=cfg.eval_n_diversity, seed=cfg.seed)
        fd = frechet_distance(real_feats, features(images)) if len(images) > 2 else float("nan")
        fdist = ev.feature_distribution_distance(train.features, ev.mask_features(masks))
        pred = segmenter.predict(images)
        from sbldm.segmentation.fast import evaluate

        # image-mask agreement on volumes whose own mask holds a tumour: an empty prediction
        # on an empty mask would score 1 and reward generators that draw no tumour at all
        has_tumour = np.asarray([m.any() for m in masks], bool)
        agree = [r["dice"] for r, t in zip(evaluate(pred, masks), has_tumour) if t]
        near = train_nearest if name.startswith("real") else ev.nearest_ssim(images, train.images)
        rows.append({
            "method": name, "n": len(images),
            "ms_ssim_pairwise": div["mean"], "ms_ssim_kernel": div["kernel_size"], "ms_ssim_scales": div["scales"],
            "frechet_distance": fd,
            "mask_feature_distance": fdist["mean"], "empty_masks": fdist["empty_fraction"],
            "seg_dice_on_own_mask": float(np.mean(agree)) if agree else float("nan"),
            "n_empty_own_mask": int((~has_tumour).sum()),
            "nearest_train_ssim_median": float(np.median(near)), "nearest_train_ssim_max": float(np.max(near)),
        })
    return rows


def adherence(pipe_gen, train, cfg: Config, guidance_scales=(1.0, None)) -> list[dict]:
    """SBLDM conditioning adherence for ``eval_n_adherence`` requested tumours drawn from
    the training distribution, at each guidance scale (None -> cfg.eval_guidance_scale).
    With ``cfg.eval_adherence_bf16`` the requests are sampled under bf16 autocast on CPU
    (the benchmark's fast path: 4x faster, latents within ~0.03 of fp32)."""
    import torch

    from sbldm.data.tumour import ConditionSampler
    from sbldm.runtime import cpu_bf16

    def autocast():
        return cpu_bf16(cfg.eval_adherence_bf16 and not torch.cuda.is_available())

    requested = ConditionSampler(train.features, cfg.volume_shape).sample(cfg.eval_n_adherence, rng=cfg.seed + 17)
    chance = ev.adherence_by_chance(requested, train.features, seed=cfg.seed)
    rows = []
    for g in guidance_scales:
        g = cfg.eval_guidance_scale if g is None else g
        masks = []
        for start in range(0, len(requested), cfg.eval_batch_size):
            block = requested[start:start + cfg.eval_batch_size]
            conds = [dict(zip(_names(), v)) for v in block]
            with autocast():
                out = pipe_gen.generate(len(block), generator=_torch_gen(cfg.seed + start), conditions=conds,
                                        sampler="ddim", num_inference_steps=cfg.num_inference_steps, guidance_scale=g)
            masks.append(_arrays(out)[1])
        a = ev.conditioning_adherence(requested, np.concatenate(masks))
        rows.append({"guidance_scale": g, **a, "chance_relative_volume_error": chance["relative_volume_error"],
                     "chance_centre_distance": chance["centre_distance"]})
    return rows


def _names():
    from sbldm.config import FEATURE_NAMES

    return FEATURE_NAMES


# -- the table ---------------------------------------------------------------------------

def paper_table1_cells(method: str) -> tuple:
    """The paper's Table 1 row of ``method`` as printed: (PSNR, SSIM, "#params", "time per
    volume"), from ``sbldm.paper.TABLE1``; four ``None`` for a method the paper lacks."""
    if method not in paper.TABLE1:
        return (None, None, None, None)
    p, s, n, t = paper.TABLE1[method]
    return p, s, f"{n / 1e6:.0f}M", f"{t:.3f} s"


def table1_rows(results: dict) -> list[dict]:
    """Rows of Table 1 from ``{method: {"psnr", "ssim", "params", "time"}}`` with the
    paper's numbers beside ours (methods named as in ``sbldm.paper.TABLE1``)."""
    rows = []
    for method, r in results.items():
        printed = paper_table1_cells(method)
        rows.append({
            "method": method,
            "psnr": r["psnr"]["mean"], "psnr_std": r["psnr"]["std"],
            "ssim": r["ssim"]["mean"], "ssim_std": r["ssim"]["std"],
            "n_samples": r["psnr"]["n"] + r["psnr"].get("n_nonfinite", 0),
            "psnr_nonfinite": r["psnr"].get("n_nonfinite", 0),
            "params_M": r["params"] / 1e6,
            "time_s_per_volume": r["time"]["median_s"], "device": r["time"]["device"],
            "paper_psnr": printed[0], "paper_ssim": printed[1], "paper_params": printed[2], "paper_time": printed[3],
        })
    return rows


def table1_volume_rows(results: dict) -> list[dict]:
    """Table 1's PSNR and SSIM per synthetic volume ``{method, volume, real_pair, psnr,
    ssim}``: sets sampled with the same batch seeds answer the same requests from the same
    starting noise and meet the same real volume, so SBLDM's DDIM and DDPM volumes pair
    volume by volume (``sbldm.report.claims``)."""
    rows = []
    for method, r in results.items():
        values = r.get("values") or {}
        for k, (p, s) in enumerate(zip(values.get("psnr", []), values.get("ssim", []))):
            rows.append({"method": method, "volume": k, "real_pair": r["pairs"][k], "psnr": p, "ssim": s})
    return rows


def table1_markdown(rows: list[dict], scale: str, seed: int, data: str) -> tuple[str, list[str]]:
    """Markdown of Table 1 (ours ± std beside the paper) and its notes."""
    head = ("| method | PSNR (ours) | SSIM (ours) | #params (ours) | time / volume (ours) | "
            "PSNR (paper) | SSIM (paper) | #params (paper) | time (paper) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['method']} | {r['psnr']:.3f} ± {r['psnr_std']:.3f} | {r['ssim']:.3f} ± {r['ssim_std']:.3f} "
                     f"| {r['params_M']:.1f}M | {r['time_s_per_volume']:.3f} s | {r['paper_psnr'] or '—'} | "
                     f"{r['paper_ssim'] or '—'} | {r['paper_params'] or '—'} | {r['paper_time'] or '—'} |")
    devices = sorted({r["device"] for r in rows})
    notes = [
        f"scale `{scale}`, data: {data}, seed {seed}, samples per method: "
        + ", ".join(f"{r['method']} {r['n_samples']}" for r in rows),
        f"our timings on {', '.join(devices)} (median of timed volumes after a warm-up); the paper's on one RTX A6000",
        "PSNR/SSIM are computed as the authors did: unpaired, each synthetic volume against a randomly "
        "permuted real training volume, FLAIR only in [0, 1], 3D SSIM with an 11^3 uniform window; "
        "they measure closeness to an arbitrary real brain, not realism — see the second table",
        "#params: every network used at sampling (SBLDM: slice VAE + 3D UNet; 3D-LDM: autoencoder + UNet; "
        "3D-LSGAN: generator)",
    ]
    return "\n".join(lines), notes


def write_table1(rows: list[dict], stem, scale: str, seed: int, data: str) -> str:
    """Write ``stem.csv`` (all columns) and ``stem.md`` (ours beside the paper, with notes)."""
    from sbldm.io import atomic_write_bytes
    from sbldm.tables import write_table

    write_table(rows, stem)
    md, notes = table1_markdown(rows, scale, seed, data)
    text = f"### Table 1 ({scale})\n\n{md}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_bytes(Path(stem).with_suffix(".md"), text.encode())
    return text
