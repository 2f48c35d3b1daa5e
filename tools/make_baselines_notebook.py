"""Write notebooks/03_train_baselines.ipynb (no outputs).

    .venv/bin/python tools/make_baselines_notebook.py

The notebook only sets parameters, calls sbldm, plots and saves; edit this script, not
the .ipynb file, and rerun it.
"""

from _nbkit import SESSION, parameters, write

PARAMETERS = parameters("seed of every random choice", '{"lsgan_steps": 500}',
                        ("resume = True", "continue from the last checkpoint if one exists"))

SETUP = SESSION + '''
import torch
from IPython.display import Markdown

import sbldm
from sbldm import plotting, tables
from sbldm.train import read_log

train, NOTE = s.train, s.note or ""
print(f"scale={scale} volume_shape={cfg.volume_shape} train={len(train)} device={device}")
print(NOTE)'''

LSGAN = '''lsgan = sbldm.build_generator("lsgan3d", cfg)
lsgan = sbldm.train_generator(lsgan, cfg, train, work / "lsgan3d", resume=resume)
print({k: f"{v / 1e6:.3f}M" for k, v in lsgan.num_parameters().items()})'''

LDM = '''ldm = sbldm.build_generator("ldm3d", cfg)
ldm = sbldm.train_generator(ldm, cfg, train, work / "ldm3d", resume=resume)
print({k: f"{v / 1e6:.3f}M" for k, v in ldm.num_parameters().items()})
print(f"latent {ldm.latent_shape}, global latent std {ldm.latent_std:.4f}, "
      f"autoencoder discriminator: {'on' if cfg.ldm3d_ae_discriminator else 'off'}")'''

CURVES = '''def curve(run_dir, key="loss"):
    records = [r for r in read_log(run_dir) if key in r]
    return [r["step"] for r in records], [r[key] for r in records]


logs = {"3D-LSGAN generator (LS loss)": curve(work / "lsgan3d", "g_loss"),
        "3D-LSGAN discriminator (LS loss)": curve(work / "lsgan3d", "d_loss"),
        "3D-LDM autoencoder": curve(work / "ldm3d" / "autoencoder"),
        f"3D-LDM UNet ({cfg.diffusion_prediction_type} {cfg.diffusion_loss})": curve(work / "ldm3d" / "unet")}
fig = plotting.loss_curves(logs, suptitle=f"baseline training losses ({scale}) {NOTE}")
plotting.save_figure(fig, out / "figures" / "baselines_loss.png")
fig'''

SAMPLES = '''figs = {}
for name, gen in (("lsgan3d", lsgan), ("ldm3d", ldm)):
    s = gen.to(device).generate(3, generator=torch.Generator().manual_seed(seed))
    title = {"lsgan3d": "3D-LSGAN", "ldm3d": f"3D-LDM, {cfg.sampler}-{cfg.num_inference_steps}"}[name]
    figs[name] = plotting.cases_figure(s.images, s.masks, labels=[f"sample {i}" for i in range(len(s))],
                                       suptitle=f"{title} samples ({scale})")
    plotting.save_figure(figs[name], out / "figures" / f"baselines_samples_{name}.png")
figs["lsgan3d"]'''

PARAMS = '''from sbldm.baselines.report import parameter_notes, parameter_rows

paper_rows = parameter_rows("paper")
rows = [{"scale": "paper", **r} for r in paper_rows]
if scale != "paper":
    rows += [{"scale": scale, **r} for r in parameter_rows(scale, **overrides)]
notes = ["params_M: counted by sbldm from the config (meta device, no weights); authors_code_M: the authors' "
         "train_lsgan.py layer sizes (3D-LSGAN) and the counts in their paper.ipynb (3D-LDM); paper_table1_M: "
         "Table 1 of the paper"] + parameter_notes(paper_rows)
md = tables.write_table(rows, out / "tables" / "baseline_parameters",
                        title="Baseline parameters (millions), paper preset beside Table 1", notes=notes)
Markdown(md)'''


def main() -> None:
    cells = [
        ("md", 
            "# 03 — Train the baselines 3D-LSGAN and 3D-LDM (paper §3.3)\n\n"
            "The paper compares SBLDM with two 3D generators trained on the same volumes, each producing "
            "(FLAIR, mask) pairs like SBLDM:\n\n"
            "- **3D-LSGAN**: the authors' DCGAN-style least-squares GAN (noise -> FC -> 3D upsampling convs -> "
            "tanh; six-layer 3D convolutional discriminator; noisy labels, Adam 2e-4 / (0.5, 0.999), gradient "
            "clip 5).\n"
            "- **3D-LDM**: a 3D KL autoencoder on whole volumes (x4 as the paper's text; the optional patch "
            "discriminator that makes it a VAE-GAN is off as in the authors' code), then the unconditional 3D "
            "UNet on its latent scaled by the global latent std, with SBLDM's noise schedule.\n\n"
            "Both train through sbldm's training loop (checkpoints, resume, `log.jsonl`, loss curve, `run.json`) "
            "into `work/<scale>/lsgan3d` and `work/<scale>/ldm3d`; the trained generators are saved in their "
            "`model/` folders and load with `sbldm.load_generator`."),
        ("code", PARAMETERS),
        ("code", SETUP),
        ("md", "## 3D-LSGAN (resumes from `work/<scale>/lsgan3d/checkpoints/last.pt` if present)"),
        ("code", LSGAN),
        ("md", "## 3D-LDM: autoencoder, latent scale, UNet (each stage resumes from its checkpoint)"),
        ("code", LDM),
        ("md", "## Training losses"),
        ("code", CURVES),
        ("md", "## Samples: axial, coronal and sagittal views through the tumour, mask outline in red"),
        ("code", SAMPLES),
        ("code", 'figs["ldm3d"]'),
        ("md", 
            "## Parameters at the paper preset, beside Table 1 (3D-LSGAN 71M, 3D-LDM 728M)\n\n"
            "The notes under the table, generated from the counts, explain each difference."),
        ("code", PARAMS),
    ]
    write("03_train_baselines.ipynb", cells)


if __name__ == "__main__":
    main()
