"""Write notebooks 00, 04, 05 and 06 (no outputs): edit this script, not the .ipynb files, and rerun it.

    .venv/bin/python tools/make_notebooks.py

(Notebooks 01-02 come from tools/make_model_notebooks.py, 03 from tools/make_baselines_notebook.py.)
The first code cell of each is tagged ``parameters`` for papermill and sbldm.reproduce.
"""

from _nbkit import SESSION, parameters, write


write("00_prepare_data.ipynb", [
("md", """
# 00 — Prepare the data (paper §3.1)

BraTS (or, by default, the phantom cohort made from MNI152 anatomy) -> volumes resampled to the
scale's `volume_shape` -> a seeded train/test split (100/100 at `small` and `paper`) -> tumour
features and their normaliser -> an nnU-Net v2 export of the training split.
Everything later reads `work/<scale>/data/`.
"""),
("code", parameters("seed of the split and of the phantom cohort", '{"n_train": 50}',
                   ("brats_dir = None", "a BraTS 2021/2023 folder; None -> the phantom cohort"))),
("code", SESSION + """
import numpy as np
from sbldm import data, plotting, prepare
from sbldm.tumor import FEATURE_NAMES

data_dir = s.data_dir
print(f"scale={scale}  volume_shape={cfg.volume_shape}  n_train={cfg.n_train}  n_test={cfg.n_test}")
"""),
("code", """
summary = prepare.prepare(cfg, data_dir, brats_dir=brats_dir)
data.atomic_write_json(out / "tables" / "data_summary.json", summary)
summary
"""),
("md", "## A few cases: three orthogonal views through the tumour, whole-tumour outline in red"),
("code", """
train = data.load_prepared(data_dir, "train")
test = data.load_prepared(data_dir, "test")
show = min(4, len(train))
fig = plotting.cases_figure(train.images[:show], train.masks[:show], labels=train.case_ids[:show],
                            suptitle=f"{summary['source']} — {scale}, {cfg.volume_shape}")
plotting.save_figure(fig, out / "figures" / "data_cases.png")
"""),
("md", "## Tumour features (raw, voxel units) of the training and test splits"),
("code", """
feats = np.concatenate([train.features, test.features])
groups = {"train": np.arange(len(feats)) < len(train), "test": np.arange(len(feats)) >= len(train)}
fig = plotting.feature_histograms(feats, FEATURE_NAMES, groups, suptitle=f"tumour features — {scale}")
plotting.save_figure(fig, out / "figures" / "data_features.png")
"""),
("code", """
from IPython.display import Markdown
from sbldm import tables, tumor
rows = tumor.feature_summary({"train": train.features, "test": test.features})
md = tables.write_table(rows, out / "tables" / "data_features",
                        title=f"Raw tumour features ({scale}, {summary['source']}, shape {cfg.volume_shape})")
Markdown(md)
"""),
])


write("04_evaluate_generation.ipynb", [
("md", """
# 04 — Table 1 and metrics beyond it

Samples every trained generator (3D-LSGAN, 3D-LDM, SBLDM with DDPM-1000 and DDIM-50), scores
them as the paper did (unpaired PSNR/SSIM, parameters, sampling time) and adds what the paper
lacked: diversity, realism, mask realism, image-mask agreement, memorisation and — for SBLDM —
adherence to the requested tumour with and without classifier-free guidance.
Samples are cached in `work/<scale>/samples/` for notebooks 05 and 06.
"""),
("code", parameters("seed of sampling and of the real/synthetic pairing", '{"eval_n_samples": 20}',
                   ("medicalnet_path = None",
                    "local MedicalNet weights (.pth) for the Fréchet distance; None -> a project-trained network"),
                   ("medicalnet_depth = 10", "depth of that MedicalNet ResNet"))),
("code", SESSION + """
import numpy as np
from IPython.display import Markdown
from sbldm import evaluation, features, segmentation, table1, tables

train, test, source = s.train, s.test, s.source
gens = table1.load_generators(work)
"""),
("md", "## Samples (cached) and timings"),
("code", """
samples = table1.sample_methods(gens, cfg, work)
times = table1.timings(gens, cfg)
{row: (s["images"].shape, f"{times[row]['median_s']:.3f} s/volume") for row, s in samples.items()}
"""),
("md", "## Table 1 — as the paper computed it"),
("code", """
results = table1.table1(samples, gens, times, train.images, seed=seed)
rows = evaluation.table1_rows(results)
Markdown(evaluation.write_table1(rows, out / "tables" / "table1", scale, seed, source))
"""),
("md", """
## Beyond the paper

A segmentation network (the `fast` backend) trained on the **real training split** gives the
image-mask agreement (its Dice on synthetic images against their own synthetic masks). The
Fréchet distance needs a feature space: MedicalNet when `medicalnet_path` points to local
weights, otherwise (nothing can be downloaded here) the pooled bottleneck of that same
project-trained network; the table's notes say which, and its numbers compare within the
table only.
"""),
("code", """
seg_path = work / "eval_segmenter.pt"
if seg_path.is_file():
    segmenter = segmentation.Segmenter.load(seg_path)
else:
    segmenter = segmentation.train_fast(train.images, train.masks, cfg, seed=seed, progress=True)
    segmenter.save(seg_path)
fx, fx_description = features.feature_extractor(medicalnet_path, segmenter, medicalnet_depth)
extra = table1.extra_metrics(samples, train, test, segmenter, cfg, features=fx)
notes = [
    f"scale `{scale}`, seed {seed}; features for the Fréchet distance: {fx_description}",
    "ms_ssim_pairwise: mean MS-SSIM over pairs of volumes of one method (lower = more diverse); kernel size and scales in their columns",
    "mask_feature_distance: mean over the 9 tumour features of the Wasserstein distance to the real training features, in units of the real feature's std; empty_masks: fraction of masks without tumour (excluded from it)",
    "seg_dice_on_own_mask: Dice of the segmentation network's prediction on each volume's image against that volume's own mask (the real test row is the reference)",
    "nearest_train_ssim: uniform-window SSIM of each volume to its nearest real training volume; a memorising generator would sit well above the real test row",
]
md = tables.write_table(extra, out / "tables" / "generation_extra", title=f"Beyond Table 1 ({scale})", notes=notes)
Markdown(md)
"""),
("md", "## Conditioning adherence (SBLDM, DDIM) without and with classifier-free guidance"),
("code", """
adh = table1.adherence(gens["sbldm"], train, cfg)
md = tables.write_table(adh, out / "tables" / "conditioning_adherence", title=f"SBLDM conditioning adherence ({scale})",
                        notes=[f"{cfg.eval_n_adherence} requested tumours drawn from the training distribution; DDIM {cfg.num_inference_steps} steps",
                               "relative_volume_error and centre_distance (voxels) are medians; spearman/pearson correlate requested and obtained volume"])
Markdown(md)
"""),
])


write("05_figures.ipynb", [
("md", """
# 05 — Figures 2 and 3

Figure 2: real volumes and samples of each method side by side, tumour outlined, in the axial
view as the paper and also coronal and sagittal (which the paper omitted).
Figure 3: SBLDM with the tumour-volume feature swept from 0 to 1 (normalised), position and
seed fixed; plus a sweep of the tumour's position.
"""),
("code", parameters("seed of the sweeps' initial noise", "",
                   ("n_volumes = 4", "volumes per row in Figure 2"))),
("code", SESSION + """
import numpy as np
from sbldm import figures, plotting, table1

figs = out / "figures"
train = s.train
gens = table1.load_generators(work)
samples = table1.sample_methods(gens, cfg, work)
"""),
("md", "## Figure 2"),
("code", """
rows = {"real": (train.images, train.masks), **{k: (v["images"], v["masks"]) for k, v in samples.items()}}
for view in ("axial", "coronal", "sagittal"):
    fig = plotting.comparison_figure(rows, n_volumes, view, suptitle=f"Figure 2 ({scale}) — {view}")
    plotting.save_figure(fig, figs / f"figure2_{view}.png")
fig
"""),
("md", "## Figure 3 — tumour-volume sweep (position fixed, same seed)"),
("code", """
values = np.linspace(0.0, 1.0, 6)
images, masks, labels = figures.volume_sweep(gens["sbldm"], train, cfg, values, seed=seed)
fig = plotting.sweep_figure(images, masks, labels, views=("axial", "coronal"),
                            suptitle=f"Figure 3 ({scale}) — requested tumour volume (normalised)")
plotting.save_figure(fig, figs / "figure3_volume_sweep.png")
fig
"""),
("md", "## Position sweep (size fixed, same seed)"),
("code", """
images, masks, labels = figures.position_sweep(gens["sbldm"], train, cfg, n=5, seed=seed)
fig = plotting.sweep_figure(images, masks, labels, views=("axial",), suptitle=f"position sweep ({scale})")
plotting.save_figure(fig, figs / "figure3_position_sweep.png")
fig
"""),
])


write("06_segmentation_study.ipynb", [
("md", """
# 06 — Segmentation study: Table 2 and a data-scarce sweep (paper §3.5)

The same segmentation backend is trained on each training set — real, real augmented x5,
synthetic only, real + synthetic, real + SBLDM + augmentation — and tested on the held-out
real test split. Synthetic volumes are the ones notebook 04 sampled (SBLDM: DDIM). The
backend is `fast` (a MONAI 3D U-Net) at `smoke`/`small` and nnU-Net v2 at `paper`
(`overrides={"seg_backend": "nnunet"}` to change it). The protocol is fixed in advance;
nothing is tuned on the test split.
"""),
("code", parameters("seed of augmentation and of the sweep's subsets", '{"seg_seeds": [0, 1, 2]}',
                   ("scarce_sizes = None",
                    "real-set sizes of the data-scarce sweep; None -> a quarter, half and all of the split"))),
("code", SESSION + """
import numpy as np
from IPython.display import Markdown
from sbldm import data, plotting, table1, table2, tables

train, test, source = s.train, s.test, s.source
samples = table1.sample_methods(table1.load_generators(work), cfg, work)
"""),
("md", "## Table 2"),
("code", """
sets = table2.training_sets(train, samples, cfg, seed=seed)
cases = table2.run_rows(sets, test, cfg, work)
tables.write_table(cases, out / "tables" / "table2_cases")
rows = table2.summarise(cases)
tables.write_table(rows, out / "tables" / "table2")
md = table2.table2_markdown(rows, scale, cfg.seg_backend, source, len(test))
data.atomic_write_bytes(out / "tables" / "table2.md", f"### Table 2 ({scale})\\n\\n{md}\\n".encode())
Markdown(md)
"""),
("md", "## Data-scarce sweep: real only vs real + SBLDM at several real-set sizes"),
("code", """
sizes = scarce_sizes or sorted({max(2, len(train) // 4), max(2, len(train) // 2), len(train)})
sweep = table2.scarce_sweep(train, samples, test, cfg, work, sizes, seed=seed)
tables.write_table(sweep, out / "tables" / "scarce_sweep", title=f"Data-scarce sweep ({scale}, backend {cfg.seg_backend})")
fig = table2.scarce_figure(sweep, scale)
plotting.save_figure(fig, out / "figures" / "scarce_sweep.png")
fig
"""),
])
