"""Scale presets: ``smoke`` (CI plumbing), ``small`` (a real CPU experiment), ``paper``.

One frozen dataclass holds every knob of every stage, flat and prefixed by stage
(``data_``, ``vae_``, ``unet_``, ``diffusion_``, ``sample_``) so that a notebook's
papermill parameters and ``resolve(scale, **overrides)`` speak the same names.

>>> cfg = resolve("small", vae_lr=2e-4)
>>> cfg.volume_shape
(64, 64, 32)

Where the paper and the authors' code disagree (the README's errata table,
``docs/paper_vs_code.md``) the default follows the paper and the other choice is a field;
the comment says which is which. Why a preset holds the values it holds (what was
measured) is in ``docs/decisions.md``. Run folder names and the identity of a saved
pipeline are in ``sbldm.runs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SCALES = ("smoke", "small", "paper")

FEATURE_NAMES = (
    "voxel_volume", "surface_area", "sphericity", "x", "y", "z", "w", "h", "d",
)


#: training stages whose checkpoints resume; each field declares the stages that read it
STAGES = ("vae", "diffusion", "ldm3d_ae", "ldm3d_unet", "lsgan3d")
#: what a diffusion UNet may predict: the noise, the velocity v, or the clean sample x0
#: (diffusers' names; ``sbldm.training.trainer.noise_batch`` builds each target)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: a stage's trajectory also depends on what the stages before it produced
UPSTREAM = {"vae": (), "diffusion": ("vae",), "ldm3d_ae": (), "ldm3d_unet": ("ldm3d_ae",), "lsgan3d": ()}


def _reads(default, *stages: str, extends: bool = False):
    """A config field read by the training ``stages`` (dataclass metadata). ``extends``:
    a larger value continues a run rather than changing it (the step counts)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}")
    return field(default=default, metadata={"stages": tuple(stages), "extends": extends})


@dataclass(frozen=True)
class Config:
    scale: str
    seed: int = _reads(0, 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')

    # -- data ------------------------------------------------------------------
    n_train: int = _reads(100, 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')                    # paper §3.2: 100 training volumes
    n_test: int = 100                     # ... and 100 held-out volumes
    volume_shape: tuple[int, int, int] = _reads((192, 192, 96), 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')   # (x, y, z) after resampling
    data_skip_unlabelled: bool = False    # BraTS folders: leave out (and list) cases without a segmentation
    image_interp_order: int = _reads(0, 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')           # 0 = nearest, as the authors' code; 1 = linear
    clip_percentiles: tuple[float, float] | None = _reads(None, 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')   # None = plain min-max (reference)
    # phantom cohort geometry on disk (BraTS: 240x240x155 at 1 mm)
    phantom_shape: tuple[int, int, int] = _reads((240, 240, 155), 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')
    phantom_spacing: tuple[float, float, float] = _reads((1.0, 1.0, 1.0), 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')

    # the tumour channels every generator carries beside the image (the slice VAE and so
    # SBLDM, the 3D-LDM's autoencoder, the 3D-LSGAN): "whole" = the paper's binary
    # whole-tumour mask; "regions" = the BraTS regions WT, TC, ET, so that samples come with
    # a sub-region label map (beyond the paper; README errata table)
    tumour_labels: str = _reads("whole", 'vae', 'ldm3d_ae', 'lsgan3d')

    # -- stage 1: slice VAE ------------------------------------------------------
    vae_channels: tuple[int, ...] = _reads((128, 256, 512, 512), 'vae')  # authors' code; len-1 = log2(downsampling)
    vae_latent_channels: int = _reads(6, 'vae')
    vae_layers_per_block: int = _reads(1, 'vae')
    vae_norm_groups: int = _reads(32, 'vae')
    vae_slice_embedding: bool = _reads(True, 'vae')      # paper: l(i) on; authors' code: off (ablation)
    vae_slice_embedding_dim: int = _reads(128, 'vae')
    vae_kl_weight: float = _reads(1e-6, 'vae')
    vae_ssim_weight: float = _reads(1.0, 'vae')
    vae_mask_weight: float = _reads(0.0, 'vae')         # authors: no mask term; > 0 adds a class-balanced L1 of the tumour channels
    vae_mask_nested: bool = _reads(False, 'vae')        # with regions: balance each region channel against the ring its enclosing one leaves
    vae_mask_band: int = _reads(0, 'vae')               # > 0: a channel without such a ring is balanced against the band of this many pixels around it
    vae_ssim_range: str = _reads("signed", 'vae')        # SSIM on [-1, 1] (range 2); "unit" = authors' [0, 1] (collapses, see vae_loss)
    vae_lpips_weight: float = _reads(0.0, 'vae')         # authors' code: 0.5, needs local LPIPS weights
    vae_lpips_path: str | None = _reads(None, 'vae')
    vae_lr: float = _reads(1e-5, 'vae')                  # paper §3.2 / authors' code
    vae_batch_size: int = _reads(32, 'vae')
    vae_steps: int = _reads(100_000, 'vae', extends=True)
    vae_empty_slice_keep: float = _reads(0.1, 'vae')     # authors' code keeps 10% of background-only slices
    vae_flip_prob: float = _reads(0.2, 'vae')            # authors' code: horizontal/vertical flips

    # -- stage 2: conditioned 3D latent diffusion -------------------------------
    unet_channels: tuple[int, ...] = _reads((64, 128, 256, 512), 'diffusion')
    unet_layers_per_block: int = _reads(2, 'diffusion')        # authors' code: 2 (paper text: 1)
    unet_norm_groups: int = _reads(32, 'diffusion')
    unet_cond_fusion: str = _reads("scale_shift", 'diffusion')  # paper; "add" = authors' code
    unet_cond_dropout: float = _reads(0.1, 'diffusion')        # classifier-free guidance (reference: 0, none)
    unet_embed_dim: int = _reads(512, 'diffusion')             # time / condition embedding width (authors' code)
    unet_time_proj_dim: int = _reads(128, 'diffusion')         # sinusoid size of the time embedding
    unet_cond_hidden_dim: int = _reads(256, 'diffusion')       # tau: 9 -> 256 -> 512 (authors' code)
    unet_mid_layers: int = _reads(2, 'diffusion')              # resnet blocks at the bottom (132.1M params at paper)
    diffusion_loss: str = _reads("mse", 'diffusion')           # paper; "l1" = authors' code
    diffusion_snr_gamma: float = _reads(0.0, 'diffusion')      # paper: 0 = off; > 0: min-SNR-gamma loss weights
    diffusion_prediction_type: str = _reads("epsilon", 'diffusion')   # paper and authors; or "v_prediction", "sample" (x0)
                                                 # (docs/decisions.md, "Prediction target")
    # the tumour channel (README errata; the paper's route is the default of each):
    condition_normalization: str = _reads("max", 'diffusion')   # authors: over the training max; "zscore"
    unet_spatial_prior: bool = _reads(False, 'diffusion')       # paper: the 9-vector only; True adds the
                                                                # rendered tumour as an input channel
    diffusion_tumour_weight: float = _reads(0.0, 'diffusion')    # paper: 0; loss weight 1 + w on the tumour
    condition_subregions: bool = _reads(False, 'diffusion')     # paper: the 9 features; True (with regions) adds the
                                                                # necrosis and enhancing shares of the tumour
    diffusion_ema_decay: float = _reads(0.0, 'diffusion')       # paper: 0 (no EMA); EMA weights for sampling
    diffusion_mixed_precision: str | None = _reads(None, 'diffusion')  # None: mixed_precision; "bf16" on CPU too
    diffusion_lr: float = _reads(1e-4, 'diffusion')
    diffusion_weight_decay: float = _reads(0.01, 'diffusion')  # AdamW default, as the authors' code
    diffusion_batch_size: int = _reads(8, 'diffusion')
    diffusion_steps: int = _reads(200_000, 'diffusion', extends=True)
    num_train_timesteps: int = _reads(1000, 'diffusion', 'ldm3d_unet')
    beta_schedule: str = _reads("scaled_linear", 'diffusion', 'ldm3d_unet')
    beta_start: float = _reads(0.002, 'diffusion', 'ldm3d_unet')
    beta_end: float = _reads(0.02, 'diffusion', 'ldm3d_unet')

    # -- sampling ----------------------------------------------------------------
    sampler: str = "ddim"                 # "ddpm" (1000 steps) | "ddim"
    num_inference_steps: int = 50
    eta: float = 0.0                      # true DDIM; the authors' code was stuck at 1
    guidance_scale: float = 1.0           # 1.0 = no classifier-free guidance

    # -- evaluation (Table 1 and beyond) -------------------------------------------
    eval_n_samples: int = 100             # synthetic volumes per method (Table 1, Table 2)
    eval_n_samples_ddpm: int = 100        # SBLDM with 1000 DDPM steps (slow on CPU)
    eval_ddpm_steps: int | None = None    # None = every training timestep (the paper's DDPM-1000)
    eval_timing_volumes: int = 3          # timed volumes per method, after one warm-up
    eval_batch_size: int = 4              # volumes sampled at once
    eval_guidance_scale: float = 3.0      # the classifier-free guidance compared with none
    eval_n_adherence: int = 50            # requested feature vectors for conditioning adherence
    eval_n_diversity: int = 20            # volumes in the pairwise MS-SSIM
    eval_adherence_bf16: bool = False     # sample the adherence requests under bf16 autocast on CPU
    ablation_steps: int = 500             # latent-UNet steps of every row of the conditioning ablation (notebook 07)
    ablation_requests: int = 50           # requested tumours per ablation row

    # -- segmentation study (Table 2) ---------------------------------------------
    seg_backend: str = "nnunet"           # "nnunet" (paper) | "fast" (MONAI 3D U-Net, smoke/small)
    seg_channels: tuple[int, ...] = (16, 32, 64, 128)   # fast backend U-Net widths
    seg_iterations: int = 2000            # fast backend: fixed optimiser-step budget
    seg_batch_size: int = 2
    seg_lr: float = 1e-3
    seg_roi: tuple[int, int, int] = (96, 96, 96)        # sliding-window size at inference
    seg_patch: tuple[int, int, int] | None = None       # fast backend training crop; None: seg_roi
    seg_flip_axes: tuple[int, ...] = ()   # fast backend: random mirroring along these axes (0 = left-right)
    seg_augment_factor: int = 5           # "augmented volumes (x5)" rows
    seg_nnunet_augmentation: bool = True  # paper: nnU-Net default augmentation; authors' code: NoDA
    seg_nnunet_fold: str = "all"          # authors' code: fold "all"; "0".."4" one fold; "5fold" all five
    seg_nnunet_epochs: int | None = None      # None: nnU-Net's 1000 epochs (paper); smoke/small shorten it
    seg_nnunet_iterations: int | None = None  # None: nnU-Net's 250 iterations per epoch
    seg_nnunet_narrow: bool | None = None     # narrow CPU plan (features 8..80); None: on CPU only
    # None: nnU-Net's planned batch, which grows with the data set (5 for 100 volumes at small's size,
    # 10 for 200), so a row with synthetic volumes would also train on more patches; a number fixes it
    # for every row (small: docs/decisions.md, "nnU-Net on CPU")
    seg_nnunet_batch_size: int | None = None
    seg_seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of every row: mean and spread across seeds
    seg_mixed_precision: str | None = None  # fast backend: None/"no" fp32; "bf16" autocast (convolutions only)
    # the fast backend's budget comes from a learning curve: a real-only run on the training split minus
    # a validation part (seg_val_fraction), validated every seg_curve_every steps up to seg_iterations;
    # the budget is the first step within seg_plateau_tolerance of the best validation Dice, applied to
    # every row (all of whose sets include the whole real training split)
    seg_val_fraction: float = 0.2
    seg_curve_every: int = 250
    seg_plateau_tolerance: float = 0.01
    # the quality-filtered SBLDM row keeps a synthetic volume only if its mask is non-empty, its
    # centre lies within seg_filter_max_centre_distance voxels of the requested one, and its volume
    # within seg_filter_max_volume_error (relative) of the requested volume
    seg_filter_max_centre_distance: float = 8.0
    seg_filter_max_volume_error: float = 0.5
    seg_scarce_sizes: tuple[int, ...] = (10, 25, 50, 100)  # real-set sizes of the data-scarce regime
    # the data-scarce regime without leakage (notebooks 10 and 11): at every size below n_train a latent
    # UNet of its own is trained on that many real volumes (the slice VAE is shared); the shared VAE is
    # checked against one trained on the smallest subset, both for scarce_vae_check_steps steps
    scarce_vae_check_steps: int = 100_000
    # protocols of using synthetic data (notebook 11): the "other ratio" row mixes this fraction of
    # the synthetic set with the real volumes; "pre-train, fine-tune" spends this fraction of the
    # budget on synthetic volumes only, the rest on the real ones (same total budget as every row)
    seg_protocol_synthetic_fraction: float = 0.5
    seg_pretrain_fraction: float = 0.5
    seg_nnunet_check: bool = False        # with the fast backend: confirm real vs real + SBLDM with nnU-Net

    # -- baselines (paper §3.3; notebook 03) -------------------------------------------
    # 3D-LSGAN, as the authors' train_lsgan.py: z -> FC -> (lsgan_g_channels, shape / 2**n)
    # -> n x (nearest up x2, conv3 [, BN, ReLU]) halving the width, the last conv to 2
    # channels + tanh; discriminator of lsgan_d_layers 3D convs k4 s2 (BN, LeakyReLU 0.2).
    lsgan_latent_dim: int = _reads(2048, 'lsgan3d')
    lsgan_g_channels: int = _reads(512, 'lsgan3d')
    lsgan_upsamplings: int = _reads(5, 'lsgan3d')            # 192x192x96 / 2**5 = 6x6x3 after the FC layer
    lsgan_d_channels: int = _reads(1024, 'lsgan3d')          # widest discriminator conv (authors' code: 1024)
    lsgan_d_layers: int = _reads(6, 'lsgan3d')               # convs k4 s2, widths d/2**(L-2) .. d, then d -> 1
    lsgan_lr: float = _reads(2e-4, 'lsgan3d')
    lsgan_beta1: float = _reads(0.5, 'lsgan3d')              # Adam betas (0.5, 0.999), as the authors
    lsgan_grad_clip: float = _reads(5.0, 'lsgan3d')          # gradient-norm clip of G and D (0 = off)
    lsgan_label_noise: float = _reads(0.05, 'lsgan3d')       # real labels 1 - 0.05 n, fake labels 0.05 n (authors)
    lsgan_batch_size: int = _reads(2, 'lsgan3d')
    lsgan_steps: int = _reads(100_000, 'lsgan3d', extends=True)            # authors: 2000 epochs of 50 steps, sampled at ~1130
    lsgan_flip_prob: float = _reads(0.2, 'lsgan3d')          # random flips of both in-plane axes (authors' rerun)
    # stabilisers beyond the authors' recipe (README errata table; docs/decisions.md, "Baselines")
    lsgan_d_lr: float | None = _reads(None, 'lsgan3d')       # the discriminator's own learning rate (None = lsgan_lr)
    lsgan_instance_noise: float = _reads(0.0, 'lsgan3d')     # std of Gaussian noise on D's inputs, annealed to 0
    # checkpoint selection on the training split only: every lsgan_select_every steps (0 = off:
    # the last step is the model) lsgan_select_samples volumes from fixed noise are scored by
    # their mask-feature distance to the training tumours; the best-scoring generator is kept
    lsgan_select_every: int = _reads(0, 'lsgan3d')
    lsgan_select_samples: int = _reads(32, 'lsgan3d')
    # 3D-LDM: a 3D KL autoencoder on whole (image, mask) volumes, then an unconditional 3D
    # UNet (ConditionedUNet3D used without condition) on its latent scaled by 1/std.
    ldm3d_ae_channels: tuple[int, ...] = _reads((64, 128, 256, 512), 'ldm3d_ae')   # authors' 3D VAE widths
    ldm3d_ae_downsampling: int = _reads(4, 'ldm3d_ae')        # paper text (x4); authors' code 8 (192 -> 24)
    ldm3d_ae_layers_per_block: int = _reads(1, 'ldm3d_ae')
    ldm3d_ae_latent_channels: int = _reads(6, 'ldm3d_ae')
    ldm3d_ae_norm_groups: int = _reads(32, 'ldm3d_ae')
    ldm3d_ae_kl_weight: float = _reads(1e-6, 'ldm3d_ae')
    ldm3d_ae_ssim_range: str = _reads("signed", 'ldm3d_ae')    # as vae_ssim_range
    ldm3d_ae_ssim_weight: float = _reads(1.0, 'ldm3d_ae')     # L1 + (1 - SSIM) + KL, as the slice VAE
    ldm3d_ae_mask_weight: float = _reads(0.0, 'ldm3d_ae')     # as vae_mask_weight (authors: no mask term)
    ldm3d_ae_mask_nested: bool = _reads(False, 'ldm3d_ae')    # as vae_mask_nested, on the volume's region channels
    ldm3d_ae_mask_band: int = _reads(0, 'ldm3d_ae')           # as vae_mask_band, in voxels
    # reconstruction check before the UNet trains: the autoencoder's decoded whole-tumour Dice
    # on training volumes (posterior means) must reach this; 0 = report only
    ldm3d_ae_min_dice: float = 0.0
    ldm3d_ae_lr: float = _reads(1e-5, 'ldm3d_ae')             # authors' 3D VAE
    ldm3d_ae_batch_size: int = _reads(2, 'ldm3d_ae')
    ldm3d_ae_steps: int = _reads(100_000, 'ldm3d_ae', extends=True)
    ldm3d_ae_discriminator: bool = _reads(False, 'ldm3d_ae')  # paper says VAE-GAN; the authors' code had none
    ldm3d_disc_channels: int = _reads(512, 'ldm3d_ae')        # patch discriminator, widest conv
    ldm3d_disc_layers: int = _reads(4, 'ldm3d_ae')
    ldm3d_disc_weight: float = _reads(0.1, 'ldm3d_ae')        # weight of the autoencoder's LS-GAN term
    ldm3d_disc_start: int = _reads(0, 'ldm3d_ae')             # step at which the adversarial term switches on
    ldm3d_unet_channels: tuple[int, ...] = _reads((64, 128, 256, 512), 'ldm3d_unet')  # authors' trained baseline; Table 1's 728M counts 128..1024
    ldm3d_unet_layers_per_block: int = _reads(2, 'ldm3d_unet')
    ldm3d_unet_norm_groups: int = _reads(32, 'ldm3d_unet')
    ldm3d_unet_mid_layers: int = _reads(2, 'ldm3d_unet')
    # the 3D-LDM's own time/condition-embedding sizes and diffusion objective (independent of
    # SBLDM's unet_*/diffusion_* fields)
    ldm3d_unet_embed_dim: int = _reads(512, 'ldm3d_unet')
    ldm3d_unet_time_proj_dim: int = _reads(128, 'ldm3d_unet')
    ldm3d_unet_cond_hidden_dim: int = _reads(256, 'ldm3d_unet')   # its condition MLP is unused (unconditional)
    ldm3d_unet_cond_fusion: str = _reads("scale_shift", 'ldm3d_unet')
    ldm3d_diffusion_loss: str = _reads("mse", 'ldm3d_unet')
    ldm3d_diffusion_prediction_type: str = _reads("epsilon", 'ldm3d_unet')
    ldm3d_diffusion_weight_decay: float = _reads(0.01, 'ldm3d_unet')
    ldm3d_diffusion_lr: float = _reads(1e-4, 'ldm3d_unet')
    ldm3d_diffusion_batch_size: int = _reads(2, 'ldm3d_unet')
    ldm3d_diffusion_steps: int = _reads(200_000, 'ldm3d_unet', extends=True)
    ldm3d_flip_prob: float = _reads(0.2, 'ldm3d_ae')          # autoencoder augmentation (authors: flips 0.2)

    # -- training loop -------------------------------------------------------------
    checkpoint_every: int = 1000
    log_every: int = 50
    mixed_precision: str = _reads("no", 'vae', 'diffusion', 'ldm3d_ae', 'ldm3d_unet', 'lsgan3d')           # "no" | "bf16" | "fp16" (GPU only)
    num_workers: int = 0


    @property
    def vae_downsampling(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.vae_downsampling
        x, y, z = self.volume_shape
        return (self.vae_latent_channels, x // f, y // f, z)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    def hash(self) -> str:
        """Short stable hash of every field: identifies the configuration in run records."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_fields(stage: str) -> tuple[str, ...]:
    """The config fields a training stage's checkpoint must agree on to be resumed: those
    declared as read by the stage or by a stage upstream of it (``_reads`` metadata),
    except the step counts (a larger count extends a run). Everything about sampling,
    evaluation and segmentation is left out."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {', '.join(STAGES)}")
    wanted = {stage, *UPSTREAM[stage]}
    return tuple(f.name for f in dataclasses.fields(Config)
                 if wanted & set(f.metadata.get("stages", ())) and not f.metadata.get("extends"))


def stages_reading(name: str) -> tuple[str, ...]:
    """The training stages that declare ``name`` as one of their fields."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name not in fields:
        raise ValueError(f"unknown config field {name!r}")
    return tuple(fields[name].metadata.get("stages", ()))


#: fields renamed since a run record or checkpoint may have been written: old -> new name
RENAMED_FIELDS = {"diffusion_tumor_weight": "diffusion_tumour_weight"}


def current_names(saved: dict) -> dict:
    """A saved config dict with fields renamed since (``RENAMED_FIELDS``) under their new names."""
    return {RENAMED_FIELDS.get(k, k): v for k, v in saved.items()}


def resume_conflicts(stage: str, saved: dict, cfg: "Config") -> list[str]:
    """``field: saved -> now`` for every stage field where a checkpoint's saved config and
    ``cfg`` differ; a field the checkpoint predates counts as its default value."""
    saved = current_names(saved)
    defaults = {f.name: f.default for f in dataclasses.fields(Config)
                if f.default is not dataclasses.MISSING}
    now = cfg.to_dict()
    out = []
    for name in stage_fields(stage):
        old = saved.get(name, defaults.get(name))
        old = list(old) if isinstance(old, tuple) else old
        new = list(now[name]) if isinstance(now[name], tuple) else now[name]
        if old != new:
            out.append(f"{name}: {old!r} -> {new!r}")
    return out


_PRESETS: dict[str, dict[str, Any]] = {
    # A handful of tiny volumes and a few optimiser steps: the whole chain runs in
    # minutes on 2 CPU cores. Its numbers mean nothing.
    "smoke": dict(
        n_train=6, n_test=4, tumour_labels="regions", vae_mask_weight=1.0, vae_mask_nested=True, vae_mask_band=2,
        volume_shape=(32, 32, 16), image_interp_order=1,
        phantom_shape=(60, 60, 39), phantom_spacing=(4.0, 4.0, 4.0),
        vae_channels=(16, 32, 32), vae_latent_channels=4, vae_norm_groups=8,
        vae_slice_embedding_dim=32, vae_lr=1e-3, vae_batch_size=8, vae_steps=20,
        vae_empty_slice_keep=1.0,
        unet_channels=(16, 32, 32), unet_layers_per_block=1, unet_norm_groups=8,
        unet_embed_dim=32, unet_time_proj_dim=16, unet_cond_hidden_dim=16, unet_mid_layers=1,
        diffusion_lr=1e-3, diffusion_batch_size=2, diffusion_steps=10,
        num_inference_steps=5, checkpoint_every=10, log_every=5,
        seg_backend="fast", seg_channels=(4, 8, 16), seg_iterations=8, seg_roi=(32, 32, 16),
        seg_augment_factor=2, seg_nnunet_epochs=2, seg_nnunet_iterations=3,
        seg_seeds=(0, 1), seg_curve_every=4, seg_scarce_sizes=(3, 6), seg_nnunet_check=True,
        scarce_vae_check_steps=10,
        eval_n_samples=6, eval_n_samples_ddpm=2, eval_timing_volumes=1, eval_batch_size=3, eval_ddpm_steps=100,
        eval_n_adherence=4, eval_n_diversity=4, ablation_steps=4, ablation_requests=4,
        lsgan_latent_dim=32, lsgan_g_channels=32, lsgan_upsamplings=2, lsgan_d_channels=32,
        lsgan_d_layers=3, lsgan_steps=10, lsgan_select_every=5, lsgan_select_samples=4, lsgan_d_lr=5e-5,
        ldm3d_ae_mask_weight=1.0,
        ldm3d_ae_channels=(8, 16, 16), ldm3d_ae_latent_channels=4, ldm3d_ae_norm_groups=4,
        ldm3d_ae_lr=1e-3, ldm3d_ae_steps=10, ldm3d_disc_channels=16, ldm3d_disc_layers=3,
        ldm3d_unet_channels=(16, 32, 32), ldm3d_unet_layers_per_block=1, ldm3d_unet_norm_groups=8,
        ldm3d_unet_mid_layers=1, ldm3d_diffusion_lr=1e-3, ldm3d_diffusion_steps=10,
        ldm3d_unet_embed_dim=32, ldm3d_unet_time_proj_dim=16, ldm3d_unet_cond_hidden_dim=16,
    ),
    # A real experiment on a 2-core CPU in an hour or two: 100/100 phantom volumes at
    # 64x64x32, slim networks, downsampling x4 so the latent keeps 16x16 per slice.
    "small": dict(
        n_train=100, n_test=100,
        tumour_labels="regions", vae_mask_weight=1.0,      # docs/decisions.md: no region decoded without it
        vae_mask_nested=True, vae_mask_band=2,             # docs/decisions.md: no necrosis decoded without them
        volume_shape=(64, 64, 32), image_interp_order=1,
        phantom_shape=(120, 120, 78), phantom_spacing=(2.0, 2.0, 2.0),
        vae_channels=(32, 64, 64), vae_latent_channels=4, vae_norm_groups=16,
        vae_slice_embedding_dim=64, vae_lr=5e-4, vae_batch_size=32, vae_steps=5000,
        vae_empty_slice_keep=0.3,
        unet_channels=(32, 64, 128), unet_layers_per_block=1, unet_norm_groups=16,
        unet_embed_dim=128, unet_time_proj_dim=32, unet_cond_hidden_dim=64, unet_mid_layers=1,
        diffusion_lr=2e-4, diffusion_batch_size=4, diffusion_steps=1800,
        # prediction target: docs/decisions.md, "Prediction target"
        diffusion_prediction_type="v_prediction",
        # the tumour channel, chosen by notebook 07's ablation: docs/decisions.md, "Tumour channel"
        condition_normalization="zscore", unet_spatial_prior=True, diffusion_mixed_precision="bf16",
        checkpoint_every=500, log_every=50,
        # the fast segmenter, from learning curves: docs/decisions.md, "The small preset's segmenter"
        seg_backend="fast", seg_channels=(16, 32, 64, 128), seg_iterations=1500, seg_roi=(64, 64, 32),
        seg_patch=(32, 32, 32), seg_batch_size=4, seg_lr=3e-3, seg_flip_axes=(0,),
        seg_curve_every=250, seg_plateau_tolerance=0.02, seg_filter_max_centre_distance=4.0,
        seg_nnunet_check=True, seg_scarce_sizes=(10, 25, 100), scarce_vae_check_steps=1500,
        seg_nnunet_epochs=40, seg_nnunet_iterations=25,  # nnU-Net budget: docs/decisions.md, "nnU-Net on CPU"
        seg_nnunet_batch_size=5,                         # the batch nnU-Net plans for the 100 real volumes
        # the Table 1 sampling budget: docs/decisions.md, "The small preset's sampling and baseline budgets"
        eval_n_samples=100, eval_n_samples_ddpm=2, eval_timing_volumes=1, eval_batch_size=10,
        eval_n_adherence=50, eval_adherence_bf16=True,
        # the conditioning ablation (notebook 07): 5 rows x 400 latent-UNet steps, 50 requests each
        ablation_steps=400, ablation_requests=50,
        lsgan_latent_dim=128, lsgan_g_channels=128, lsgan_upsamplings=4, lsgan_d_channels=128,
        lsgan_d_layers=5, lsgan_steps=3000,
        # a slower discriminator and checkpoint selection on the training split, from the baseline
        # ablation (docs/decisions.md, "Baselines")
        lsgan_d_lr=5e-5, lsgan_select_every=100, lsgan_select_samples=32,
        # the baselines' step counts: docs/decisions.md, "The small preset's sampling and baseline budgets"
        # the 3D-LDM autoencoder: mask term, width 16 at full resolution and the reconstruction
        # gate, from the baseline ablation (docs/decisions.md, "Baselines")
        ldm3d_ae_channels=(16, 32, 32), ldm3d_ae_latent_channels=4, ldm3d_ae_norm_groups=4,
        ldm3d_ae_mask_weight=1.0, ldm3d_ae_min_dice=0.5,
        ldm3d_ae_mask_nested=True, ldm3d_ae_mask_band=2,    # no TC/ET decoded without them (same section)
        # 1000 steps: at 500 the nested term left the image behind (image MAE 0.175, samples without a brain)
        ldm3d_ae_lr=5e-4, ldm3d_ae_steps=1000, ldm3d_disc_channels=64, ldm3d_disc_layers=3,
        ldm3d_unet_channels=(16, 32, 64), ldm3d_unet_layers_per_block=1, ldm3d_unet_norm_groups=8,
        ldm3d_unet_mid_layers=1, ldm3d_diffusion_lr=2e-4, ldm3d_diffusion_batch_size=4,
        ldm3d_diffusion_steps=1500,
        ldm3d_unet_embed_dim=128, ldm3d_unet_time_proj_dim=32, ldm3d_unet_cond_hidden_dim=64,
        ldm3d_diffusion_prediction_type="v_prediction",
    ),
    # Paper scale: 192x192x96, 100/100 BraTS volumes, the sizes of Table 1. GPU.
    "paper": dict(),
}


def resolve(scale: str, **overrides: Any) -> Config:
    """The preset for ``scale`` with ``overrides`` applied.

    Raises ``ValueError`` naming the valid choices for an unknown scale or field.
    """
    if scale not in _PRESETS:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    valid = {f.name for f in dataclasses.fields(Config)} - {"scale"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"unknown config parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(sorted(valid))}"
        )
    values = {**_PRESETS[scale], **overrides}
    # JSON / papermill hand lists where the dataclass keeps tuples.
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    cfg = Config(scale=scale, **values)
    _validate(cfg)
    return cfg


def _check_types(cfg: Config) -> None:
    """Every field has the type its declaration says (ints stay ints, a float field takes
    an int), step counts and batch sizes are positive, learning rates too."""
    import typing

    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        value, hint = getattr(cfg, f.name), hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        if value is None:
            if not optional:
                raise ValueError(f"{f.name}=None is not valid; expected {_type_name(hint)}")
            continue
        base = typing.get_origin(hint) or hint
        if base is typing.Union or str(base) == "types.UnionType":
            base = next(a for a in args if a is not type(None))
            base = typing.get_origin(base) or base
        ok = (isinstance(value, bool) if base is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if base is float else
              isinstance(value, int) and not isinstance(value, bool) if base is int else
              isinstance(value, tuple) if base is tuple else
              isinstance(value, str) if base is str else True)
        if not ok:
            raise ValueError(f"{f.name}={value!r} is not valid; expected {_type_name(hint)}")
        if base is float and not np_isfinite(value):
            raise ValueError(f"{f.name}={value!r} is not a finite number")
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if (f.name.endswith("_steps") or f.name.endswith("_batch_size")) and value < 1:
            raise ValueError(f"{f.name}={value!r} is not valid; expected a positive integer")
        if f.name.endswith("_lr") and not value > 0:
            raise ValueError(f"{f.name}={value!r} is not valid; a learning rate must be > 0")


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def np_isfinite(value) -> bool:
    import math

    return math.isfinite(float(value))


def _validate(cfg: Config) -> None:
    _check_types(cfg)
    choices = {
        "unet_cond_fusion": ("scale_shift", "add"),
        "diffusion_loss": ("mse", "l1"),
        "diffusion_prediction_type": PREDICTION_TYPES,
        "ldm3d_diffusion_prediction_type": PREDICTION_TYPES,
        "ldm3d_diffusion_loss": ("mse", "l1"),
        "ldm3d_unet_cond_fusion": ("scale_shift", "add"),
        "ldm3d_ae_ssim_range": ("signed", "unit"),
        "sampler": ("ddpm", "ddim"),
        "tumour_labels": ("whole", "regions"),
        "mixed_precision": ("no", "bf16", "fp16"),
        "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
        "seg_backend": ("nnunet", "fast"),
        "vae_ssim_range": ("signed", "unit"),
        "condition_normalization": ("max", "zscore"),
        "seg_mixed_precision": (None, "no", "bf16"),
    }
    for name, allowed in choices.items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")
    if len(cfg.volume_shape) != 3 or any(int(s) <= 0 for s in cfg.volume_shape):
        raise ValueError(f"volume_shape must be three positive sizes, got {cfg.volume_shape}")
    f = cfg.vae_downsampling
    if cfg.volume_shape[0] % f or cfg.volume_shape[1] % f:
        raise ValueError(
            f"volume_shape {cfg.volume_shape} in-plane sizes must be divisible by the VAE "
            f"downsampling factor {f} (from vae_channels={cfg.vae_channels})"
        )
    if not 0.0 <= cfg.vae_empty_slice_keep <= 1.0:
        raise ValueError(f"vae_empty_slice_keep must lie in [0, 1], got {cfg.vae_empty_slice_keep}")
    if cfg.diffusion_mixed_precision not in (None, "no", "bf16"):
        raise ValueError(f"diffusion_mixed_precision={cfg.diffusion_mixed_precision!r} is not valid; choose one of "
                         "None (follow mixed_precision), 'no', 'bf16'")
    if cfg.diffusion_snr_gamma < 0:
        raise ValueError(f"diffusion_snr_gamma must be >= 0 (0 = off), got {cfg.diffusion_snr_gamma}")
    if cfg.vae_mask_band < 0:
        raise ValueError(f"vae_mask_band must be >= 0 pixels, got {cfg.vae_mask_band}")
    if cfg.vae_mask_weight < 0:
        raise ValueError(f"vae_mask_weight must be >= 0, got {cfg.vae_mask_weight}")
    if cfg.diffusion_tumour_weight < 0:
        raise ValueError(f"diffusion_tumour_weight must be >= 0, got {cfg.diffusion_tumour_weight}")
    if cfg.condition_subregions and cfg.tumour_labels != "regions":
        raise ValueError("condition_subregions conditions on the necrosis and enhancing shares of the tumour, which "
                         "only label maps carry: it needs tumour_labels='regions'")
    if not 0.0 <= cfg.diffusion_ema_decay < 1.0:
        raise ValueError(f"diffusion_ema_decay must lie in [0, 1), got {cfg.diffusion_ema_decay}")
    if not 0.0 <= cfg.unet_cond_dropout < 1.0:
        raise ValueError(f"unet_cond_dropout must lie in [0, 1), got {cfg.unet_cond_dropout}")
    _validate_baselines(cfg)
    _validate_segmentation(cfg)
    if cfg.n_train < 1 or cfg.n_test < 0:
        raise ValueError(f"n_train must be >= 1 and n_test >= 0, got {cfg.n_train}, {cfg.n_test}")


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a config written by ``Config.to_dict`` (e.g. from a run record)."""
    d = current_names(d)
    scale = d.pop("scale")
    return resolve(scale, **d)


def _validate_segmentation(cfg: Config) -> None:
    if not 0.0 < cfg.seg_val_fraction < 1.0:
        raise ValueError(f"seg_val_fraction must lie in (0, 1), got {cfg.seg_val_fraction}")
    if cfg.seg_iterations < 1 or cfg.seg_curve_every < 1:
        raise ValueError(f"seg_iterations and seg_curve_every must be >= 1, got {cfg.seg_iterations}, "
                         f"{cfg.seg_curve_every}")
    if any(a not in (0, 1, 2) for a in cfg.seg_flip_axes):
        raise ValueError(f"seg_flip_axes must name axes 0, 1 or 2, got {cfg.seg_flip_axes}")
    if cfg.seg_patch is not None and (len(cfg.seg_patch) != 3 or any(int(v) < 1 for v in cfg.seg_patch)):
        raise ValueError(f"seg_patch must be three positive sizes or None, got {cfg.seg_patch}")
    if cfg.seg_nnunet_batch_size is not None and int(cfg.seg_nnunet_batch_size) < 1:
        raise ValueError(f"seg_nnunet_batch_size must be >= 1 or None (nnU-Net's plan), got {cfg.seg_nnunet_batch_size}")
    if not cfg.seg_seeds:
        raise ValueError("seg_seeds must name at least one training seed")
    if len(set(cfg.seg_seeds)) != len(cfg.seg_seeds):
        raise ValueError(f"seg_seeds must be distinct, got {cfg.seg_seeds}")
    if not cfg.seg_scarce_sizes or any(int(n) < 1 for n in cfg.seg_scarce_sizes):
        raise ValueError(f"seg_scarce_sizes must be positive sizes, got {cfg.seg_scarce_sizes}")
    if cfg.scarce_vae_check_steps < 1:
        raise ValueError(f"scarce_vae_check_steps must be >= 1, got {cfg.scarce_vae_check_steps}")
    for name in ("seg_protocol_synthetic_fraction", "seg_pretrain_fraction"):
        if not 0.0 < getattr(cfg, name) < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {getattr(cfg, name)}")
    for name in ("seg_plateau_tolerance", "seg_filter_max_centre_distance", "seg_filter_max_volume_error"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _validate_baselines(cfg: Config) -> None:
    """Shape-free checks of the baseline fields; whether their sizes fit ``volume_shape``
    is checked when a baseline is built (``sbldm.generators``), so an odd volume shape
    only stops the models that cannot take it."""
    f = cfg.ldm3d_ae_downsampling
    levels = len(cfg.ldm3d_ae_channels)
    if f < 1 or f & (f - 1) or f > 2 ** (levels - 1):
        raise ValueError(f"ldm3d_ae_downsampling={f} must be a power of two <= 2**(len(ldm3d_ae_channels)-1) "
                         f"= {2 ** (levels - 1)}")
    for name in ("lsgan_flip_prob", "ldm3d_flip_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(cfg, name)}")
    for name in ("ldm3d_ae_mask_weight", "ldm3d_ae_mask_band", "lsgan_instance_noise", "lsgan_select_every"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.ldm3d_ae_min_dice <= 1.0:
        raise ValueError(f"ldm3d_ae_min_dice must lie in [0, 1] (0 = report only), got {cfg.ldm3d_ae_min_dice}")
    if cfg.lsgan_d_lr is not None and not cfg.lsgan_d_lr > 0:
        raise ValueError(f"lsgan_d_lr must be positive or None (= lsgan_lr), got {cfg.lsgan_d_lr}")
    if cfg.lsgan_select_every and cfg.lsgan_select_samples < 2:
        raise ValueError(f"lsgan_select_samples must be >= 2 when lsgan_select_every > 0, got {cfg.lsgan_select_samples}")
