"""The data-scarce regime, its generators trained on each size's real volumes (notebooks 10 and 11; beyond Table 2).

The paper's title claim is that synthetic volumes help when real ones are scarce, and it
generates them "from the restricted training set". A segmenter trained on ``n`` real
volumes plus synthetic ones is only a fair test of that claim if the generator of those
synthetic volumes saw the same ``n`` real volumes, no more. So, at every real-set size
``n`` below the full training split:

- the ``n`` real volumes are the first ``n`` of one seeded permutation of the training
  split (``real_subsets``): nested, so the 10 are among the 25; the same subsets serve the
  generator and the segmenter;
- a latent UNet of its own is trained on the latents of those ``n`` volumes only, with
  the condition normaliser, the feature distribution it samples conditions from, the
  spatial priors and the brain support all fitted on them (``train_scarce_generator``);
  at the full size the generator is notebook 02's;
- the slice VAE is shared: it was trained on the whole training split. Its slices carry
  no sampling distribution of tumours (the UNet and the conditions do), but it did see
  more real data than ``n``. ``vae_subset_check`` measures what that buys: two VAEs
  trained with the same budget, one on the smallest subset and one on the whole split,
  reconstructing the held-out split (a report only: nothing is chosen on it).

Notebook 11 then compares, at every size, real only with the protocols of using the
synthetic volumes (``sbldm.segmentation.table2``'s rows, same seeds, same test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sbldm.config import Config
from sbldm.data.cohort import Prepared
from sbldm.data.tumour import FeatureNormalizer
from sbldm.io import atomic_write_json, save_model
from sbldm.segmentation import statistics, table2

#: the Table 1 row whose sample settings the per-size generators sample with
SAMPLE_ROW = "SBLDM (DDIM)"


def real_subsets(n_train: int, sizes, seed: int = 0) -> dict[int, np.ndarray]:
    """``{n: sorted indices into the training split}`` for every size (capped at
    ``n_train``): the first ``n`` of one permutation drawn with ``seed``, so smaller subsets
    lie inside larger ones and the full size is the whole split."""
    if n_train < 1:
        raise ValueError(f"an empty training split has no subsets (n_train={n_train})")
    sizes = sorted({min(int(s), n_train) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"subset sizes must be positive, got {sizes}")
    order = np.random.default_rng(seed).permutation(n_train)
    return {n: np.sort(order[:n]) for n in sizes}


def subset_indices(n_train: int, n: int, seed: int = 0) -> np.ndarray:
    """The indices of the size-``n`` subset of ``real_subsets`` (``n`` capped at ``n_train``)."""
    return real_subsets(n_train, [n], seed)[min(int(n), n_train)]


def real_set(train: Prepared, cfg: Config, idx) -> tuple[np.ndarray, np.ndarray]:
    """(images as the segmenter reads them, segmentation targets) of the training volumes ``idx``."""
    return table2.inputs(train, cfg)[idx], table2.targets(train, cfg)[idx]


def subset_split(split: Prepared, idx) -> Prepared:
    """The volumes ``idx`` of a prepared split as a split of their own, with the feature
    normaliser refitted on them (nothing of the other volumes remains)."""
    idx = np.asarray(idx, int)
    if not len(idx):
        raise ValueError("an empty subset")
    features = np.asarray(split.features)[idx]
    return Prepared(case_ids=[split.case_ids[i] for i in idx], images=np.asarray(split.images)[idx],
                    masks=np.asarray(split.masks)[idx], features=features,
                    normalizer=FeatureNormalizer.fit(features, split.images.shape[1:]),
                    affines=np.asarray(split.affines)[idx], labels=np.asarray(split.labels)[idx],
                    sequences=None if split.sequences is None else np.asarray(split.sequences)[idx],
                    modalities=split.modalities)


def subset_latents(latents, idx):
    """The latents of the volumes ``idx``, with the global latent scale recomputed on them."""
    from sbldm.diffusion.latents import Latents, global_std

    idx = np.asarray(idx, int)
    mean = np.asarray(latents.mean)[idx]
    ids = None if latents.case_ids is None else [latents.case_ids[i] for i in idx]
    return Latents(mean, np.asarray(latents.std)[idx], global_std(mean), ids)


def generator_dir(work: Path, n: int) -> Path:
    """Where the generator of real-set size ``n`` lives: ``work/scarce/n<n>``."""
    return Path(work) / "scarce" / f"n{int(n)}"


def train_scarce_generator(cfg: Config, vae, latents, train: Prepared, idx, out_dir, resume: bool = True,
                           device=None, progress: bool = True, vae_saw: int | None = None):
    """A latent UNet trained on the volumes ``idx`` of ``train`` only (their latents,
    conditions, priors and brain support), assembled with the shared ``vae`` into an
    ``SBLDMPipeline`` saved to ``out_dir/pipeline``; ``out_dir/record.json`` says what it saw
    (``vae_saw``: the real volumes ``vae`` was trained on, default all of ``train``).
    Resumes from ``out_dir/diffusion``'s checkpoint."""
    from sbldm.training.trainer import train_pipeline

    out_dir = Path(out_dir)
    if len(latents) != len(train):
        raise ValueError(f"{len(latents)} latents for {len(train)} training volumes")
    sub = subset_split(train, idx)
    if latents.case_ids is not None and list(latents.case_ids) != list(train.case_ids):
        raise ValueError("the latents were encoded from other volumes than the training split's")
    pipe = train_pipeline(cfg, vae, subset_latents(latents, idx), sub, out_dir / "diffusion", resume=resume,
                          device=device, progress=progress)
    save_model(pipe, out_dir / "pipeline")     # unchanged files keep their times: the draws stay cached
    atomic_write_json(out_dir / "record.json", {
        "n_real": len(sub), "case_ids": sub.case_ids, "unet_saw": len(sub),
        "vae_saw": len(train) if vae_saw is None else int(vae_saw), "vae_steps": cfg.vae_steps,
        "diffusion_steps": cfg.diffusion_steps, "config_hash": cfg.hash()})
    return pipe


def vae_check_dir(work: Path, n: int) -> Path:
    """The slice VAE of ``vae_subset_check`` trained on ``n`` real volumes."""
    return Path(work) / "scarce" / "vae_check" / f"n{int(n)}"


def leakfree_dir(work: Path, vae_saw: int) -> Path:
    """The leak-free study's generator whose slice VAE saw ``vae_saw`` real volumes."""
    return Path(work) / "scarce" / "leakfree" / f"vae{int(vae_saw)}"


#: the leak-free study's rows (``leakfree_study``): SBLDM volumes from a generator whose slice
#: VAE saw only the n real volumes, and from one whose VAE saw the whole training split
LEAKFREE, SHARED_VAE = "real + SBLDM, VAE saw these only", "real + SBLDM, VAE saw all"


def train_leakfree_generators(cfg: Config, train: Prepared, n: int, work: Path, seed: int = 0,
                              resume: bool = True, device=None, progress: bool = True) -> dict[int, Path]:
    """What the shared slice VAE buys, at the real-set size ``n``: two generators whose
    latent UNets are trained on the same ``n`` real volumes (``real_subsets``), one on the
    slice VAE ``vae_subset_check`` trained on those ``n`` only — encoded, normalised and
    scaled from them alone, so no network of it saw another real volume — and one on the
    VAE it trained on the whole split. Both VAEs train ``scarce_vae_check_steps`` steps and
    both UNets ``diffusion_steps``: equal budgets, only what the VAE saw differs. Returns
    ``{vae_saw: generator folder}`` (``leakfree_dir``)."""
    from sbldm.diffusion.latents import encode_dataset
    from sbldm.training.trainer import train_vae

    vcfg = cfg.replace(vae_steps=cfg.scarce_vae_check_steps)
    idx = subset_indices(len(train), n, seed)
    sub = subset_split(train, idx)
    out = {}
    for split in (sub, train):
        vae = train_vae(vcfg, split, vae_check_dir(work, len(split)), resume=resume, device=device,
                        progress=progress).eval()
        latents = encode_dataset(vae, sub.images, sub.labels, device=device, case_ids=sub.case_ids,
                                 progress=progress)
        d = leakfree_dir(work, len(split))
        train_scarce_generator(vcfg, vae, latents, sub, np.arange(len(sub)), d, resume=resume, device=device,
                               progress=progress, vae_saw=len(split))
        out[len(split)] = d
    return out


def generator_record(work: Path, n: int) -> dict:
    """What the generator of size ``n`` saw (``record.json``); a clear error if it is missing."""
    path = generator_dir(work, n) / "record.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no generator trained on {n} real volumes; run notebook 10 first")
    return json.loads(path.read_text())


def scarce_samples(cfg: Config, work: Path, n: int, progress: bool = True, draw: int | None = None,
                   bf16: bool = False) -> dict:
    """The synthetic set of the size-``n`` generator: ``cfg.eval_n_samples`` volumes drawn as
    Table 1's SBLDM (DDIM) row, cached in ``work/scarce/n<n>/samples``; ``draw``: its noise
    seed (``sbldm.evaluation.table1.sample_row``; default Table 1's); ``bf16``: as there."""
    generator_record(work, n)
    return samples_of(generator_dir(work, n), cfg, progress=progress, draw=draw, bf16=bf16)


def samples_of(d: Path, cfg: Config, progress: bool = True, draw: int | None = None, n: int | None = None,
               bf16: bool = False) -> dict:
    """The synthetic set of the generator in ``d`` (``d/pipeline``), cached in ``d/samples``
    (``n``: another number of volumes than ``eval_n_samples``)."""
    from sbldm.evaluation.table1 import sample_row
    from sbldm.generators.registry import load_generator

    d = Path(d)
    if not (d / "pipeline" / "model_index.json").is_file():
        raise FileNotFoundError(f"{d / 'pipeline'}: no trained generator; run notebook 10 first")
    return sample_row(SAMPLE_ROW, load_generator(d / "pipeline"), cfg, d / "samples", d / "pipeline",
                      progress=progress, draw=draw, n=n, bf16=bf16)


def vae_subset_check(cfg: Config, train: Prepared, test: Prepared, n: int, work: Path, seed: int = 0,
                     resume: bool = True, device=None, progress: bool = True) -> list[dict]:
    """Does a slice VAE trained on ``n`` real volumes reconstruct the held-out split much
    worse than one trained on all of ``train``? Both train ``cfg.scarce_vae_check_steps``
    steps (resumable, in ``work/scarce/vae_check/n<size>``); rows ``{vae_trained_on, metric,
    mean, std, n}`` of PSNR per volume and the decoded mask's (and regions') Dice per volume."""
    from sbldm.diffusion.latents import reconstruct_volumes
    from sbldm.evaluation.reconstruction import reconstruction_rows
    from sbldm.training.trainer import train_vae

    vcfg = cfg.replace(vae_steps=cfg.scarce_vae_check_steps)
    idx = subset_indices(len(train), n, seed)
    rows = []
    for split in (subset_split(train, idx), train):
        vae = train_vae(vcfg, split, vae_check_dir(work, len(split)), resume=resume,
                        device=device, progress=progress).eval()
        images, masks, labels = reconstruct_volumes(vae.float().cpu(), test.images, test.labels)
        rows += [{"vae_trained_on": len(split), **r}
                 for r in reconstruction_rows(test.images, test.masks, images, masks, test.labels, labels,
                                              only=("psnr_3d", "dice_3d"))]
    return rows


def generator_rows(train: Prepared, subsets: dict, samples: dict, records: dict) -> list[dict]:
    """One row per real-set size: what its latent UNet and VAE saw, and how its synthetic
    set compares with the real tumours it was trained on (the mask-feature distance of
    ``sbldm.data.tumour``, empty masks excluded and counted)."""
    from sbldm.data.tumour import NECROSIS, feature_distribution_distance, mask_features

    rows = []
    for n, idx in subsets.items():
        s, rec = samples[n], records[n]
        d = feature_distribution_distance(np.asarray(train.features)[idx], mask_features(s["masks"]))
        labels = s.get("labels")
        rows.append({"n_real": n, "latent_unet_saw": rec["unet_saw"], "vae_saw": rec["vae_saw"],
                     "unet_steps": rec["diffusion_steps"], "synthetic_volumes": len(s["masks"]),
                     "empty_masks": d["empty_fraction"], "mask_feature_distance": d["mean"],
                     "with_necrosis": (float(np.mean([(lab == NECROSIS).any() for lab in labels]))
                                       if labels is not None else float("nan")),
                     "generator": rec.get("generator", f"work/scarce/n{n}")})
    return rows


# -- notebook 11: segmenters on n real volumes, with and without their generator's volumes --

#: the protocols of using synthetic volumes, beside real only (row names of the tables; the
#: filtered row is Table 2's own)
REAL, MIXING, PRETRAIN = "real", "real + SBLDM", "SBLDM pre-train, real fine-tune"
#: the real volumes with augmented copies: what real data alone can do with the same budget
REAL_AUG = "real + augmentation"
FILTERED = table2.FILTERED


def ratio_row(cfg: Config) -> str:
    """The name of the row that mixes a fraction of the synthetic set with the real volumes."""
    return f"real + {cfg.seg_protocol_synthetic_fraction:.0%} of SBLDM"


def protocol_sets(real: tuple, synthetic: tuple, cfg: Config, protocols: bool = True,
                  augment_seed: int | None = None) -> tuple[dict, dict]:
    """``({row: training set}, filter report)`` at one real-set size: real only, real with
    ``seg_augment_factor`` x augmentation (``REAL_AUG``: what the real volumes alone give
    beyond themselves) and mixing (all the synthetic volumes, the paper's way), and with
    ``protocols`` the other ways of using them, at the same budget:

    - ``ratio_row``: the real volumes with the first ``seg_protocol_synthetic_fraction`` of
      the synthetic set (another synthetic : real ratio);
    - ``FILTERED``: with the synthetic volumes that carry the tumour they were asked for
      (``sbldm.segmentation.table2.quality_filter``), when the requests are known;
    - ``PRETRAIN``: ``seg_pretrain_fraction`` of the budget on the synthetic volumes alone,
      the rest on the real ones, starting from those weights.

    ``real``: (images, targets); ``synthetic``: (images, targets, requested features or None);
    ``augment_seed``: the augmentation's seed (default ``cfg.seed``)."""
    im, tg, requested = synthetic
    cat = lambda a, b: (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))  # noqa: E731
    aug_seed = cfg.seed if augment_seed is None else int(augment_seed)
    sets = {REAL: real, REAL_AUG: table2.augment(*real, cfg.seg_augment_factor, seed=aug_seed),
            MIXING: cat(real, (im, tg))}
    report = {}
    if protocols:
        k = max(1, round(len(im) * cfg.seg_protocol_synthetic_fraction))
        sets[ratio_row(cfg)] = cat(real, (im[:k], tg[:k]))
        if requested is not None:
            keep, report = table2.quality_filter(tg > 0, requested, cfg)
            sets[FILTERED] = cat(real, (im[keep], tg[keep]))
        sets[PRETRAIN] = table2.PretrainFinetune((im, tg), real, cfg.seg_pretrain_fraction)
    return sets, report


#: Table 2's rows (notebook 06): real, augmentation, 3 synthetic only, 3 real + synthetic, the
#: filtered SBLDM row and real + SBLDM + augmentation
TABLE2_ROWS = 10


def shared_counts(cfg: Config) -> set[int]:
    """The synthetic counts whose count-sweep sets are the data-scarce study's own at a
    protocol size (``count_sweep``): 0 (real only), one draw (``eval_n_samples``: the mixing
    row) and the ratio row's first part of it."""
    n = int(cfg.eval_n_samples)
    return {0, n, max(1, round(n * cfg.seg_protocol_synthetic_fraction))}


def training_counts(cfg: Config) -> dict:
    """At most how many segmenters notebooks 06 and 11 train under ``cfg``, per part and per
    backend (rows whose training data and settings coincide are trained once and read back,
    so the runs can train fewer):

    - ``table2``: Table 2's rows x seeds; ``nnunet_check``: its 2 rows x the check seeds on
      nnU-Net when the fast backend leads (run when the fast backend finds an effect);
    - ``sweep``: real, real + augmentation and real + SBLDM at every real-set size x seeds;
    - ``protocols``: the ratio and filtered rows at the smallest and the full size x seeds,
      and ``pretrain_finetune`` there (always on the fast backend: weights carried between
      two runs);
    - ``leakfree``: real and the two generators' rows at the smallest size x seeds (none when
      that size is the whole split);
    - ``count_sweep``: the synthetic counts at the smallest and the full size x seeds that the
      study has not trained already (0 is real only, one draw's size ``eval_n_samples`` the
      mixing row, its ``seg_protocol_synthetic_fraction`` the ratio row: ``count_sweep``);
    - ``scarce_nnunet_check``: notebook 11's 2 rows x the check seeds at the smallest size,
      as ``nnunet_check``;
    - ``learning_curves``: the fast backend's budget runs (Table 2's and one per size).
    """
    seeds = len(cfg.seg_seeds)
    sizes = real_subsets(cfg.n_train, cfg.seg_scarce_sizes)
    ends = {min(sizes), max(sizes)}
    main = cfg.seg_backend
    fast = main == "fast"
    check = 2 * len(cfg.seg_nnunet_check_seeds) if fast and cfg.seg_nnunet_check else 0
    out = {"table2": TABLE2_ROWS * seeds, "nnunet_check": check, "sweep": 3 * len(sizes) * seeds,
           "protocols": 2 * len(ends) * seeds, "pretrain_finetune": len(ends) * seeds,
           "leakfree": 3 * seeds if min(sizes) < cfg.n_train else 0,
           "count_sweep": len(set(cfg.seg_count_sweep) - shared_counts(cfg)) * len(ends) * seeds,
           "scarce_nnunet_check": check,
           "learning_curves": 1 + len(sizes) if fast else 0, "seeds": seeds, "sizes": list(sizes)}
    on_main = out["table2"] + out["sweep"] + out["protocols"] + out["leakfree"] + out["count_sweep"]
    out["nnunet"] = out["nnunet_check"] + out["scarce_nnunet_check"] + (0 if fast else on_main)
    out["fast"] = out["pretrain_finetune"] + out["learning_curves"] + (on_main if fast else 0)
    return out


def size_budgets(train: Prepared, subsets: dict, cfg: Config, work: Path, seed: int = 0,
                 progress=print) -> dict[int, int]:
    """``{n: segmenter budget}``: at every real-set size, the budget chosen by the learning
    curve (``sbldm.segmentation.table2.budget``) on a validation part of that size's own
    real volumes, so that real only trains as long as suits its own data (a budget chosen
    on 100 volumes means hundreds of epochs on 10, where added synthetic volumes could win
    as a brake on over-training rather than as data). Every row at that size uses it."""
    out = {}
    for n, idx in subsets.items():
        if len(idx) < 2:
            raise ValueError(f"a budget for {n} real volume(s) needs a validation part: use sizes of at least 2")
        out[n] = int(table2.budget(subset_split(train, idx), cfg, work, seed=seed, progress=progress,
                                   name=f"learning_curve_n{n}")["budget"])
    return out


def size_sets(train: Prepared, cfg: Config, idx, samples, protocols: bool = False, reports: dict | None = None):
    """``sets_for(seed)`` of one real-set size (``protocol_sets`` on the real volumes ``idx``
    and the synthetic set ``samples``: one set for every seed, built once, or a callable
    ``seed -> sample set`` with the augmentation redrawn per seed as well); the first
    seed's filter report goes to ``reports[len(idx)]``."""
    labels = cfg.tumour_labels == "regions"
    real = real_set(train, cfg, idx)
    redraw, built = callable(samples), {}

    def sets_for(seed):
        if not redraw and built:                # one set for every seed: built once
            return built["sets"]
        drawn = samples(seed) if redraw else samples
        synth = table2.synthetic_set("SBLDM", drawn, len(drawn["images"]), labels, cfg)
        sets, report = protocol_sets(real, synth, cfg, protocols=protocols,
                                     augment_seed=table2.synthetic_draw(cfg, seed) if redraw else None)
        if reports is not None:
            reports.setdefault(len(idx), report)
        built["sets"] = sets
        return sets

    return sets_for


def scarce_study(train: Prepared, test: Prepared, cfg: Config, work: Path, subsets: dict, samples: dict,
                 records: dict, protocol_sizes=(), seeds=None, iterations: int | dict | None = None,
                 progress=print) -> tuple[list[dict], dict]:
    """Per-case rows (``sbldm.segmentation.table2.run_rows``' plus ``n_real``,
    ``n_synthetic``, ``generator_saw``, ``vae_saw``, ``iterations``) of every training set
    at every size of ``subsets`` (``{n: indices}``), its synthetic volumes from
    ``samples[n]`` (drawn by the generator that saw those ``n``: ``records[n]``), every
    seed; the protocols at the sizes in ``protocol_sizes``. ``samples[n]`` is one sample
    set for every seed, or a callable ``seed -> sample set`` (that training seed's own draw,
    ``sbldm.segmentation.table2.synthetic_draw``; its augmentation is then redrawn with the
    same seed). ``iterations``: one budget for every size, or ``{n: budget}``
    (``size_budgets``). Returns (cases, {n: filter report of the first seed's set})."""
    cases, reports = [], {}
    for n, idx in subsets.items():
        saw = int(records[n]["unet_saw"])
        if saw != len(idx):
            raise ValueError(f"the generator for {n} real volumes saw {saw}: its synthetic volumes would leak")
        sets_for = size_sets(train, cfg, idx, samples[n], protocols=n in set(protocol_sizes), reports=reports)
        steps = iterations.get(n) if isinstance(iterations, dict) else iterations
        rows = table2.run_rows_by_seed(sets_for, test, cfg, work, seeds=seeds, iterations=steps, progress=progress,
                                       tag=f"scarce{n}_")
        cases += [{**c, "n_real": n, "n_synthetic": 0 if c["row"] == REAL_AUG else int(c["n_train_volumes"]) - n,
                   "generator_saw": saw,
                   "vae_saw": int(records[n]["vae_saw"]), "iterations": steps} for c in rows]
    return cases, reports


def count_row(k: int) -> str:
    """The synthetic-count sweep's row with ``k`` synthetic volumes (0: real only)."""
    return REAL if int(k) == 0 else f"real + {int(k)} SBLDM"


def extra_draws(cfg: Config, seed: int, needed: int) -> list[int]:
    """The noise seeds of the ``needed`` further synthetic draws that training seed ``seed``'s
    count sweep adds to its own draw (``sbldm.segmentation.table2.synthetic_draw``): the
    draws of the training seeds after it in ``seg_seeds`` (cyclically), which the study has
    drawn already, then fresh noise seeds beyond them; never its own draw or one twice (with
    ``seg_redraw_synthetic`` off every training seed shares one draw, so they are all fresh)."""
    seeds = [int(s) for s in cfg.seg_seeds]
    own = table2.synthetic_draw(cfg, seed)
    order = seeds[seeds.index(seed) + 1:] + seeds[:seeds.index(seed)] if seed in seeds else seeds
    out, taken = [], {own}
    for t in order:
        d = table2.synthetic_draw(cfg, t)
        if len(out) < needed and d not in taken:
            out.append(d)
            taken.add(d)
    fresh = max(taken) + 1
    while len(out) < needed:
        if fresh not in taken:
            out.append(fresh)
            taken.add(fresh)
        fresh += 1
    return out


def count_sweep(train: Prepared, test: Prepared, cfg: Config, work: Path, n: int, draw, seed: int = 0,
                iterations: int | None = None, progress=print) -> list[dict]:
    """Per-case rows of real plus ``k`` synthetic volumes for every ``k`` of
    ``cfg.seg_count_sweep`` at the real-set size ``n`` (``count_row``): the paper's plateau
    beyond 100 synthetic volumes. ``draw(noise_seed)``: a sample set of the generator that
    saw those ``n`` real volumes (e.g. ``scarce_samples`` with ``draw=``). Each training seed
    takes its own draw first, in the order drawn, then the draws of ``extra_draws`` (the
    other training seeds' draws: volumes the study has already paid for), permuted by that
    seed; so every ``k`` of one seed is nested in the next, and up to one draw's size the
    rows are the study's own sets: real + all of the seed's draw is ``MIXING``'s set and
    its first half the ratio row's, read back rather than retrained (``run_rows`` keys kept
    results by the training data). Rows carry ``n_real`` and ``n_synthetic``."""
    counts = sorted({int(k) for k in cfg.seg_count_sweep})
    if not counts or counts[0] < 0:
        raise ValueError(f"seg_count_sweep must be non-negative counts, got {cfg.seg_count_sweep}")
    labels = cfg.tumour_labels == "regions"
    idx = subset_indices(len(train), n, seed)
    real = real_set(train, cfg, idx)

    def synthetic(noise):
        s = draw(noise)
        return table2.synthetic_set("SBLDM", s, len(s["images"]), labels, cfg)[:2]

    def sets_for(s):
        im, tg = synthetic(table2.synthetic_draw(cfg, s))
        if len(im) < 1:
            raise ValueError("the synthetic draw is empty: raise eval_n_samples")
        needed = -(-max(counts[-1] - len(im), 0) // len(im))           # further draws of the same size
        if needed:
            more = [synthetic(d) for d in extra_draws(cfg, s, needed)]
            ex_im, ex_tg = np.concatenate([m[0] for m in more]), np.concatenate([m[1] for m in more])
            order = np.random.default_rng([int(s), len(idx)]).permutation(len(ex_im))
            im, tg = np.concatenate([im, ex_im[order]]), np.concatenate([tg, ex_tg[order]])
        return {count_row(k): (np.concatenate([real[0], im[:k]]), np.concatenate([real[1], tg[:k]]))
                for k in counts}

    cases = table2.run_rows_by_seed(sets_for, test, cfg, work, iterations=iterations, progress=progress,
                                    tag=f"count{len(idx)}_")
    return [{**c, "n_real": len(idx), "n_synthetic": int(c["n_train_volumes"]) - len(idx)} for c in cases]


def count_rows(cases: list[dict]) -> list[dict]:
    """The synthetic-count table: per real-set size and count, Dice per region against real
    only (seed-paired, ``statistics.summarise``), and against the row with 100 synthetic
    volumes (``vs_100_*``: the paper's plateau: more than 100 adds nothing), Holm over the
    size's comparisons with 100."""
    regions = statistics.regions_of(cases)
    out = []
    for n in dict.fromkeys(c["n_real"] for c in cases):
        sel = [c for c in cases if c["n_real"] == n]
        synth = {c["row"]: c["n_synthetic"] for c in sel}
        hundred = count_row(100)
        more = [r for r, k in synth.items() if k > 100] if hundred in synth else []
        vs = statistics.verdicts({(r, g): statistics.seed_paired(sel, r, hundred, f"dice_{g}" if regions else "dice")
                                  for r in more for g in (regions or ["all"])})
        for r in statistics.summarise(sel):
            row = {"n_real": n, "synthetic_volumes": synth[r["row"]], "training_set": r["row"], "seeds": r["seeds"],
                   **_region_columns(r, regions)}
            for g in (regions or ["all"]):
                v = vs.get((r["row"], g))
                if v is not None:
                    row.update({f"vs_100_diff_{g}": v["diff"], f"vs_100_ci95_low_{g}": v["lo"],
                                f"vs_100_ci95_high_{g}": v["hi"], f"vs_100_p_seeds_{g}": v["p_holm"],
                                f"vs_100_verdict_{g}": v["verdict"]})
            out.append(row)
    return out


def count_figure(counts: list[dict], regions, scale: str):
    """The paper's plateau as a figure: per region, each count row of ``count_rows`` minus
    real only against the number of synthetic volumes, paired by seed with its 95% interval,
    one line per real-set size (the count 0 row is real only itself: 0 by construction).
    Where more than 100 volumes lose against 100 (``vs_100_verdict_<region>`` a loss) the
    point is ringed."""
    from sbldm.plotting import EXTRA_METHOD_COLOURS, agg_pyplot

    plt = agg_pyplot()
    regions = list(regions) or ["all"]
    fig, axes = plt.subplots(1, len(regions), figsize=(3.6 * len(regions), 3.3), squeeze=False)
    sizes = list(dict.fromkeys(r["n_real"] for r in counts))
    for ax, g in zip(axes[0], regions):
        ax.axhline(0.0, color="0.6", lw=0.8)
        for k, n in enumerate(sizes):
            rs = sorted((r for r in counts if r["n_real"] == n), key=lambda r: int(r["synthetic_volumes"]))
            pts = []
            for r in rs:
                k_syn = int(r["synthetic_volumes"])
                got = [(0, 0.0, 0.0, 0.0)] if k_syn == 0 else _paired_points([r], g)
                pts += [(k_syn, *p[1:]) for p in got]
            if len(pts) < 2:                    # real only alone: nothing to draw
                continue
            colour = EXTRA_METHOD_COLOURS[k % len(EXTRA_METHOD_COLOURS)]
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts],
                                                                        [p[3] - p[1] for p in pts]],
                        marker="o", capsize=3, color=colour, label=f"{n} real volumes")
            lost = [(int(r["synthetic_volumes"]), float(r[f"diff_{g}"])) for r in rs
                    if r.get(f"vs_100_verdict_{g}") == statistics.LOSS]
            if lost:
                ax.plot(*zip(*lost), ls="none", marker="o", ms=12, mfc="none", mec=colour)
        ax.set_xlabel("synthetic volumes added")
        ax.set_title(f"{'WT' if g == 'all' else g}: real + SBLDM minus real only", fontsize=9)
    axes[0][0].set_ylabel("Dice difference, paired by seed (95%)")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    seeds = max(int(r["seeds"]) for r in counts)
    fig.suptitle(f"the number of synthetic volumes ({scale}): {seeds} training seeds; ringed: below the row with 100 "
                 "(seed-paired, Holm)", fontsize=9)
    fig.tight_layout()
    return fig


def leakfree_study(train: Prepared, test: Prepared, cfg: Config, work: Path, n: int, seed: int = 0,
                   iterations: int | None = None, progress=print) -> list[dict]:
    """Per-case rows at the real-set size ``n``: real only, and real plus the synthetic set
    of each ``train_leakfree_generators`` generator (``LEAKFREE``: its VAE saw the ``n``
    only; ``SHARED_VAE``: its VAE saw all), every training seed on its own draw
    (``sbldm.segmentation.table2.synthetic_draw``), with ``n_real`` and ``vae_saw``."""
    labels = cfg.tumour_labels == "regions"
    idx = subset_indices(len(train), n, seed)
    real = real_set(train, cfg, idx)
    dirs = {LEAKFREE: leakfree_dir(work, len(idx)), SHARED_VAE: leakfree_dir(work, len(train))}
    saw = {REAL: 0}
    for row, d in dirs.items():
        record = json.loads((d / "record.json").read_text()) if (d / "record.json").is_file() else None
        if record is None or int(record["unet_saw"]) != len(idx):
            raise FileNotFoundError(f"{d}: no generator trained on the {len(idx)} real volumes; run notebook 10 first")
        saw[row] = int(record["vae_saw"])

    def sets_for(s):
        sets = {REAL: real}
        for row, d in dirs.items():
            drawn = samples_of(d, cfg, progress=False, draw=table2.synthetic_draw(cfg, s), bf16=cfg.seg_synthetic_bf16)
            im, tg, _ = table2.synthetic_set(row, drawn, len(drawn["images"]), labels, cfg)
            sets[row] = (np.concatenate([real[0], im]), np.concatenate([real[1], tg]))
        return sets

    cases = table2.run_rows_by_seed(sets_for, test, cfg, work, iterations=iterations, progress=progress,
                                    tag=f"leakfree{n}_")
    return [{**c, "n_real": len(idx), "vae_saw": saw[c["row"]]} for c in cases]


def leakfree_rows(cases: list[dict]) -> list[dict]:
    """The leak-free table: each row's Dice per region against real only
    (``statistics.summarise``, seed-paired), and a last row, the shared VAE's synthetic set
    against the leak-free one per training seed: what the shared VAE bought in Dice."""
    regions = statistics.regions_of(cases)
    first = {c["row"]: c for c in cases}
    out = [{"training_set": r["row"], "n_real": first[r["row"]]["n_real"], "vae_saw_real": first[r["row"]]["vae_saw"],
            "seeds": r["seeds"], **_region_columns(r, regions)} for r in statistics.summarise(cases)]
    bought = {"training_set": f"{SHARED_VAE} minus {LEAKFREE}", "n_real": first[LEAKFREE]["n_real"],
              "vae_saw_real": "", "seeds": ""}
    comparisons = {g: statistics.seed_paired(cases, SHARED_VAE, LEAKFREE, f"dice_{g}" if regions else "dice")
                   for g in (regions or ["all"])}
    for g, r in statistics.verdicts(comparisons).items():
        bought.update({f"diff_{g}": r["diff"], f"ci95_low_{g}": r["lo"], f"ci95_high_{g}": r["hi"],
                       f"p_seeds_{g}": r["p_holm"], f"verdict_{g}": r["verdict"]})
        bought["seeds"] = r["seeds"]
    return out + [bought]


def summarise_study(cases: list[dict]) -> list[dict]:
    """Per size, ``sbldm.segmentation.statistics.summarise`` of its rows (mean ± std across seeds,
    per region; paired test against real only at that size, Holm within the size), with
    ``n_real``, ``n_synthetic``, ``generator_saw`` and ``vae_saw`` in front."""
    out = []
    for n in dict.fromkeys(c["n_real"] for c in cases):
        sel = [c for c in cases if c["n_real"] == n]
        first = {c["row"]: c for c in sel}
        for r in statistics.summarise(sel):
            c = first[r["row"]]
            out.append({"n_real": n, "n_synthetic": c["n_synthetic"], "generator_saw": c["generator_saw"],
                        "vae_saw": c["vae_saw"], **r})
    return out


def _region_columns(r: dict, regions, lesion: bool = False) -> dict:
    """Per region of a summarised row: Dice and its seed std (and lesion-wise Dice); the
    seed-paired difference to real only with its 95% interval and verdict
    (``statistics.seed_paired``); the per-case Holm p as the secondary test."""
    out = {}
    for g in regions:
        out[f"dice_{g}"] = r[f"dice_{g}_mean"]
        out[f"dice_{g}_seed_std"] = r[f"dice_{g}_seed_std"]
        if lesion:
            out[f"lesion_dice_{g}"] = r[f"lesion_dice_{g}_mean"]
        for key in (f"diff_{g}", f"ci95_low_{g}", f"ci95_high_{g}", f"p_seeds_{g}", f"verdict_{g}"):
            if key in r:
                out[key] = r[key]
        out[f"p_holm_{g}"] = r[f"p_holm_{g}"]
    return out


def sweep_rows(summary: list[dict], regions) -> list[dict]:
    """The data-scarce sweep table: real only, real + augmentation and mixing at every size,
    Dice per region."""
    return [{"n_real": r["n_real"], "training_set": r["row"], "synthetic_volumes": r["n_synthetic"],
             "generator_saw_real": r["generator_saw"], "vae_saw_real": r["vae_saw"], "seeds": r["seeds"],
             **_region_columns(r, regions)} for r in summary if r["row"] in (REAL, REAL_AUG, MIXING)]


def protocol_rows(summary: list[dict], sizes, regions) -> list[dict]:
    """The protocol table: every training set at the protocol sizes, Dice and lesion-wise
    Dice per region, each against real only at its size; ``backend``: the segmenter that
    trained it (pre-training then fine-tuning runs with the fast one under any backend)."""
    return [{"n_real": r["n_real"], "protocol": r["row"], "volumes": r["n_train_volumes"], "seeds": r["seeds"],
             **({"backend": r["backend"]} if "backend" in r else {}),
             **_region_columns(r, regions, lesion=True)} for r in summary if r["n_real"] in set(sizes)]


def _paired_points(rs: list[dict], g: str) -> list[tuple]:
    """(n_real, diff, ci95_low, ci95_high) of the summarised rows ``rs`` that carry a finite
    seed-paired difference in region ``g``."""
    import math

    keys = (f"diff_{g}", f"ci95_low_{g}", f"ci95_high_{g}")
    out = []
    for r in rs:
        vals = [r.get(k) for k in keys]
        if all(v not in (None, "") and math.isfinite(float(v)) for v in vals):
            out.append((r["n_real"], *map(float, vals)))
    return out


def sweep_figure(summary: list[dict], regions, scale: str):
    """Dice on the real test split against the number of real volumes, one panel per
    region, real only, real + augmentation and real + SBLDM, mean ± std across seeds; below,
    where the rows carry them (two seeds or more), each row minus real only per training
    seed with its 95% interval: the comparison the verdicts rest on, which the spread of
    the means above hides."""
    from sbldm.plotting import agg_pyplot, method_styles

    plt = agg_pyplot()
    paired = {name: {g: _paired_points([r for r in summary if r["row"] == name], g) for g in regions}
              for name in (REAL_AUG, MIXING)}
    two = any(pts for by in paired.values() for pts in by.values())
    fig, axes = plt.subplots(2 if two else 1, len(regions), figsize=(3.6 * len(regions), 6.2 if two else 3.2),
                             squeeze=False)
    sizes = sorted({r["n_real"] for r in summary})
    styles = method_styles([REAL, MIXING])           # the methods' palette: real in black, SBLDM in purple
    styles[REAL_AUG] = {"color": styles[REAL]["color"], "linestyle": ":"}
    legend = {REAL: "real only (training subset)", REAL_AUG: "real + augmentation", MIXING: "real + SBLDM"}
    markers = {REAL: "o", REAL_AUG: "^", MIXING: "s"}
    for ax, g in zip(axes[0], regions):
        for name in (REAL, REAL_AUG, MIXING):
            rs = sorted((r for r in summary if r["row"] == name), key=lambda r: r["n_real"])
            if not rs:
                continue
            ax.errorbar([r["n_real"] for r in rs], [r[f"dice_{g}_mean"] for r in rs],
                        yerr=[r[f"dice_{g}_seed_std"] for r in rs], marker=markers[name], capsize=3, label=legend[name],
                        color=styles[name]["color"], ls=styles[name]["linestyle"])
        ax.set_ylim(0, 1)
        ax.set_title(f"{g} Dice", fontsize=9)
    if two:
        for ax, g in zip(axes[1], regions):
            ax.axhline(0.0, color="0.6", lw=0.8)
            for shift, name in ((0.95, REAL_AUG), (1.05, MIXING)):     # side by side on the log axis
                pts = sorted(paired[name][g])
                if not pts:
                    continue
                x = [n * shift for n, *_ in pts]
                d = [p[1] for p in pts]
                ax.errorbar(x, d, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                            marker=markers[name], capsize=3, color=styles[name]["color"], ls="none",
                            label=f"{legend[name]} minus real only")
            ax.set_title(f"{g}: minus real only, paired by seed", fontsize=9)
        axes[1][0].set_ylabel("Dice difference (95% interval)")
        axes[1][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("real training volumes")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.minorticks_off()                              # the log axis's own minor labels (4x10^0) add nothing
    axes[0][0].set_ylabel("Dice on the real test split")
    axes[0][0].legend(fontsize=8)
    seeds = max(r["seeds"] for r in summary)
    fig.suptitle(f"data-scarce regime ({scale}): each size's synthetic volumes from a latent UNet trained on that "
                 f"size (the slice VAE shared); mean ± std over {seeds} seed(s)", fontsize=9)
    fig.tight_layout()
    return fig
