"""Write notebooks/01_train_vae.ipynb and notebooks/02_train_diffusion.ipynb (no outputs).

    .venv/bin/python tools/make_model_notebooks.py

The notebooks only set parameters, call sbldm, plot and save; edit this script, not
the .ipynb files, and rerun it.
"""

from _nbkit import SESSION, parameters, write

PARAMETERS = parameters("seed of every random choice", '{"vae_steps": 500}',
                        ("resume = True", "continue from the last checkpoint if one exists"))

SETUP = SESSION + '''
import numpy as np
import torch
from IPython.display import Markdown, display

from sbldm import data, plotting, tables
from sbldm.train import read_log

train, test, NOTE = s.train, s.test, s.note
print(f"scale={scale} volume_shape={cfg.volume_shape} train={len(train)} test={len(test)} device={device}")'''


def nb01():
    cells = [
        ("md", 
            "# 01 — Train the slice VAE (paper §2.2)\n\n"
            "Stage 1 of SBLDM: a 2D KL autoencoder of (FLAIR, mask) axial slices, told where each slice "
            "sits by the slice-position embedding l(i). Trained on the training split's slices; "
            "reconstruction is measured on the held-out (test) split. The model goes to "
            "`work/<scale>/vae`, tables and figures to `results/<scale>/`."),
        ("code", PARAMETERS),
        ("code", SETUP),
        ("md", "## Training (resumes from `work/<scale>/vae/checkpoints/last.pt` if present)"),
        ("code", 
            'from sbldm.train import train_vae\n\n'
            'vae = train_vae(cfg, train, work / "vae", resume=resume).to(device)\n'
            'fig = plotting.plot_loss_curve(read_log(work / "vae"), title=f"slice VAE loss ({scale})")\n'
            'plotting.save_figure(fig, out / "figures" / "vae_loss.png")\n'
            'fig'),
        ("md", 
            "## Reconstruction of held-out slices\n\n"
            "PSNR and SSIM per axial slice (images mapped to [0, 1]; also per volume), Dice of the "
            "decoded mask (thresholded at 0) on tumour-bearing slices. Encoding uses the posterior mean."),
        ("code", 
            'from sbldm.latents import reconstruct_volumes\n'
            'from sbldm.metrics import reconstruction_metrics\n\n'
            'rec_images, rec_masks = reconstruct_volumes(vae, test.images, test.masks)\n'
            'metrics = reconstruction_metrics(test.images, test.masks, rec_images, rec_masks)\n'
            'labels = {"psnr": "PSNR (dB), per slice", "ssim": "SSIM, per slice", "dice": "mask Dice, tumour slices",\n'
            '          "psnr_3d": "PSNR (dB), per volume", "ssim_3d": "SSIM, per volume"}\n'
            'rows = [{"metric": labels[k], "mean": v["mean"], "std": v["std"], "n": v["n"]} for k, v in metrics.items()]\n'
            'md = tables.write_table(rows, out / "tables" / "vae_reconstruction",\n'
            '                        title=f"Slice VAE reconstruction of the {len(test)} held-out volumes ({scale})",\n'
            '                        notes=[n for n in (NOTE, f"config hash {cfg.hash()}, seed {seed}") if n])\n'
            'Markdown(md)'),
        ("md", "## Real vs reconstructed slices across the whole depth (mask outline in red)"),
        ("code", 
            'k = 0\n'
            'fig = plotting.slice_strip([("real", test.images[k], test.masks[k]),\n'
            '                            ("reconstructed", rec_images[k], rec_masks[k])], n_slices=12,\n'
            '                           suptitle=f"{test.case_ids[k]} — slice VAE ({scale})")\n'
            'plotting.save_figure(fig, out / "figures" / "vae_reconstruction.png")\n'
            'fig'),
        ("md", "## Parameters (this scale and the paper preset)"),
        ("code", 
            'from sbldm.pipeline import parameter_rows\n\n'
            'rows = [r for r in parameter_rows(("paper", scale)) if r["component"] == "slice VAE"]\n'
            'md = tables.write_table(rows, out / "tables" / "vae_parameters", title="Slice VAE parameters (millions)",\n'
            '                        notes=["the authors\' VAE has no slice embedding: compare the middle column"])\n'
            'Markdown(md)'),
    ]
    return cells


def nb02():
    cells = [
        ("md", 
            "# 02 — Train the conditioned 3D latent diffusion model (paper §2.2-2.3)\n\n"
            "Every training volume is encoded slice by slice with the VAE of notebook 01; the slice "
            "latents are stacked into a 3D latent (C, H', W', D) and scaled by the global latent std. "
            "A 3D UNet conditioned on the 9 tumour features learns their distribution (DDPM). The "
            "assembled `SBLDMPipeline` goes to `work/<scale>/pipeline`."),
        ("code", PARAMETERS),
        ("code", SETUP),
        ("md", "## Latents: posterior means of every training slice, stacked in depth"),
        ("code", 
            'from sbldm.latents import encode_dataset, save_latents\n'
            'from sbldm.models.vae import SliceVAE\n\n'
            'vae = SliceVAE.from_pretrained(work / "vae").to(device).eval()\n'
            'latents = encode_dataset(vae, train.images, train.masks, case_ids=train.case_ids)\n'
            'save_latents(work / "latents", latents)\n'
            'print(f"latents {latents.mean.shape}, global std {latents.latent_std:.4f} "\n'
            '      f"(scaling factor {latents.scaling_factor:.4f})")'),
        ("md", "## Training (resumes from `work/<scale>/diffusion/checkpoints/last.pt` if present)"),
        ("code", 
            'from sbldm.pipeline import SBLDMPipeline\n'
            'from sbldm.train import train_diffusion\n\n'
            'unet = train_diffusion(cfg, latents, train.conditions, work / "diffusion", resume=resume)\n'
            'pipe = SBLDMPipeline.from_components(cfg, vae, unet, normalizer=train.normalizer,\n'
            '                                     train_features=train.features, latent_std=latents.latent_std)\n'
            'pipe.save_pretrained(work / "pipeline")\n'
            'pipe = pipe.to(device)\n'
            'fig = plotting.plot_loss_curve(read_log(work / "diffusion"), title=f"latent diffusion loss ({scale})")\n'
            'plotting.save_figure(fig, out / "figures" / "diffusion_loss.png")\n'
            'fig'),
        ("md", 
            "## A few sampled volumes: axial, coronal and sagittal views, mask outline in red\n\n"
            "Conditions are drawn from the training distribution of tumour features."),
        ("code", 
            'samples = pipe(num_volumes=3, num_inference_steps=cfg.num_inference_steps, sampler=cfg.sampler,\n'
            '               eta=cfg.eta, guidance_scale=cfg.guidance_scale,\n'
            '               generator=torch.Generator(device).manual_seed(seed))\n'
            'labels = [f"sample {i} (vol {r[0]:.0f} vx)" for i, r in enumerate(samples.raw_conditions)]\n'
            'fig = plotting.cases_figure(samples.images, samples.masks, labels=labels,\n'
            '                            suptitle=f"SBLDM samples, {cfg.sampler}-{cfg.num_inference_steps} ({scale})")\n'
            'plotting.save_figure(fig, out / "figures" / "diffusion_samples.png")\n'
            'fig'),
        ("md", "## Parameters: the paper preset (Table 1: 159M) and this scale"),
        ("code", 
            'from sbldm.pipeline import parameter_rows\n\n'
            'rows = parameter_rows(("paper", scale))\n'
            'md = tables.write_table(rows, out / "tables" / "parameters", title="SBLDM parameters (millions)",\n'
            '                        notes=["authors_code_M: REFERENCE_CODE.md (VAE 27.08M, UNet 132.1M without / "\n'
            '                               "135.2M with embedding layers) and the paper\'s Table 1 total (159M)",\n'
            '                               "the paper\'s total counts neither the slice embedding (absent from the "\n'
            '                               "authors\' VAE) nor the UNet\'s embedding layers"])\n'
            'Markdown(md)'),
    ]
    return cells


def main():
    write("01_train_vae.ipynb", nb01())
    write("02_train_diffusion.ipynb", nb02())


if __name__ == "__main__":
    main()
