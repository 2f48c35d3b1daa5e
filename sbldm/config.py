"""Scale presets: ``smoke`` (CI plumbing), ``small`` (a real CPU experiment), ``paper``.

A ``Config`` is a frozen dataclass of sections, one per stage of the method, and the
sections reuse their types: SBLDM's latent UNet and the 3D-LDM's are both a ``UNetConfig``,
the slice VAE and the 3D-LDM's autoencoder both extend ``AutoencoderConfig``. A builder
takes its section (``build_unet(cfg.ldm3d.unet, ...)``).

========================  ==========================  ===========================================
section                   type                        flat names
========================  ==========================  ===========================================
``data``                  ``DataConfig``              ``n_train``, ``volume_shape``, ``tumour_labels``, ...
``vae``                   ``SliceVAEConfig``          ``vae_*``
``unet``                  ``UNetConfig``              ``unet_*`` (SBLDM's latent UNet)
``condition``             ``ConditionConfig``         ``condition_*``, ``unet_cond_dropout``,
                                                      ``unet_spatial_prior``
``diffusion``             ``SBLDMDiffusionConfig``    ``diffusion_*`` (objective and optimiser)
``schedule``              ``ScheduleConfig``          ``num_train_timesteps``, ``beta_*``
``sampling``              ``SamplingConfig``          ``sampler``, ``num_inference_steps``, ``eta``,
                                                      ``guidance_scale``, ``steer_steps``
``evaluation``            ``EvaluationConfig``        ``eval_*``, ``ablation_*``
``segmentation``          ``SegmentationConfig``      ``seg_*``, ``scarce_vae_check_steps``
``segmentation.nnunet``   ``NnUNetConfig``            ``seg_nnunet_*``
``lsgan``                 ``LSGANConfig``             ``lsgan_*``
``ldm3d.ae``              ``VolumeAEConfig``          ``ldm3d_ae_*``, ``ldm3d_disc_*``, ``ldm3d_flip_prob``
``ldm3d.unet``            ``UNetConfig``              ``ldm3d_unet_*``
``ldm3d.diffusion``       ``DiffusionConfig``         ``ldm3d_diffusion_*``
``precision``             ``PrecisionConfig``         ``mixed_precision``, ``diffusion_mixed_precision``,
                                                      ``seg_mixed_precision``, ``eval_adherence_bf16``
``training``              ``TrainingLoopConfig``      ``checkpoint_every``, ``log_every``
========================  ==========================  ===========================================

Every leaf also has a flat name, so that a notebook's papermill parameters, the runner's
``-p`` and ``resolve(scale, **overrides)`` speak one language, and ``cfg.vae_lr`` is
``cfg.vae.lr``. ``to_dict`` and ``hash`` are over the flat names: run names, checkpoints and
saved run records do not depend on how the sections are laid out.

>>> cfg = resolve("small", vae_lr=2e-4)
>>> cfg.vae.lr, cfg.volume_shape
(0.0002, (64, 64, 32))

Where the paper and the authors' code disagree (``docs/paper_vs_code.md``) the default
follows the paper and the other choice is a field; the comment says which is which. Why a
preset holds the values it holds (what was measured) is in ``docs/decisions.md``. Run folder
names and the identity of a saved pipeline are in ``sbldm.runs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

SCALES = ("smoke", "small", "paper")

FEATURE_NAMES = (
    "voxel_volume", "surface_area", "sphericity", "x", "y", "z", "w", "h", "d",
)


#: training stages whose checkpoints resume; each field declares the stages that read it
STAGES = ("vae", "diffusion", "ldm3d_ae", "ldm3d_unet", "lsgan3d")
#: what a diffusion UNet may predict: the noise, the velocity v, or the clean sample x0
#: (diffusers' names; ``sbldm.training.objectives.noise_batch`` builds each target)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: a stage's trajectory also depends on what the stages before it produced
UPSTREAM = {"vae": (), "diffusion": ("vae",), "ldm3d_ae": (), "ldm3d_unet": ("ldm3d_ae",), "lsgan3d": ()}
_ALL = STAGES


def _check_stages(stages) -> tuple[str, ...]:
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}")
    return tuple(stages)


def _reads(default, *stages: str, extends: bool = False):
    """A leaf read by exactly the training ``stages`` (dataclass metadata), whatever its
    section declares. ``extends``: a larger value continues a run rather than changing it
    (the step counts)."""
    return field(default=default, metadata={"stages": _check_stages(stages), "extends": extends})


def _steps(default):
    """A step count: read by its section's stages, and a larger one extends a run."""
    return field(default=default, metadata={"extends": True})


def _added(default, *stages: str):
    """A leaf added after presets' hashes were first recorded: it enters ``Config.hash``
    only when set away from ``default``, so every configuration that predates it keeps its
    hash (and the run records and checkpoints naming it stay valid)."""
    meta = {"added": True}
    if stages:
        meta["stages"] = _check_stages(stages)
    return field(default=default, metadata=meta)


def _section(factory, *stages: str, prefix: str = "", rename: dict[str, str] | None = None):
    """A section of the config: its leaves are read by the training ``stages`` (unless a
    leaf declares its own), and are named ``prefix + leaf`` in the flat view, or
    ``rename[leaf]`` where the historical flat name differs. Nested sections add their
    prefix to their parent's."""
    return field(default_factory=factory,
                 metadata={"section": True, "stages": _check_stages(stages), "prefix": prefix,
                           "rename": dict(rename or {})})


# -- data ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    n_train: int = _reads(100, *_ALL)                 # paper §3.2: 100 training volumes
    n_test: int = _reads(100)                         # ... and 100 held-out volumes
    volume_shape: tuple[int, int, int] = _reads((192, 192, 96), *_ALL)   # (x, y, z) after resampling
    skip_unlabelled: bool = _reads(False)             # BraTS folders: leave out (and list) cases without a segmentation
    image_interp_order: int = _reads(0, *_ALL)        # 0 = nearest, as the authors' code; 1 = linear
    clip_percentiles: tuple[float, float] | None = _reads(None, *_ALL)   # None = plain min-max (reference)
    # phantom cohort geometry on disk (BraTS: 240x240x155 at 1 mm)
    phantom_shape: tuple[int, int, int] = _reads((240, 240, 155), *_ALL)
    phantom_spacing: tuple[float, float, float] = _reads((1.0, 1.0, 1.0), *_ALL)
    # the tumour channels every generator carries beside the image (the slice VAE and so
    # SBLDM, the 3D-LDM's autoencoder, the 3D-LSGAN): "whole" = the paper's binary
    # whole-tumour mask; "regions" = the BraTS regions WT, TC, ET, so that samples come with
    # a sub-region label map (beyond the paper; docs/paper_vs_code.md)
    tumour_labels: str = _reads("whole", "vae", "ldm3d_ae", "lsgan3d")
    # the MRI sequences read from each case: ("flair",) = the paper's FLAIR only; the four BraTS
    # sequences ("t1n", "t1c", "t2w", "t2f") = T1, T1ce, T2, FLAIR, each normalised on its own
    # within the brain (sbldm.data.cohort). SBLDM's slice VAE and the segmenters read every one
    # (seg_sequences picks some); the 3D-LDM and the 3D-LSGAN draw the FLAIR alone.
    modalities: tuple[str, ...] = _added(("flair",), *_ALL)


# -- autoencoders: the slice VAE (stage 1) and the 3D-LDM's volume autoencoder ----------
@dataclass(frozen=True)
class AutoencoderConfig:
    """What both autoencoders share: widths, latent, the loss L1 + (1 - SSIM) + KL [+ mask
    term] and the optimiser."""
    channels: tuple[int, ...] = (128, 256, 512, 512)  # authors' slice VAE; len-1 = log2(downsampling)
    latent_channels: int = 6
    layers_per_block: int = 1
    norm_groups: int = 32
    kl_weight: float = 1e-6
    ssim_weight: float = 1.0
    ssim_range: str = "signed"        # SSIM on [-1, 1] (range 2); "unit" = authors' [0, 1] (collapses, see vae_loss)
    mask_weight: float = 0.0          # authors: no mask term; > 0 adds a class-balanced L1 of the tumour channels
    mask_nested: bool = False         # with regions: balance each region channel against the ring its enclosing one leaves
    mask_band: int = 0                # > 0: a channel without such a ring is balanced against the band of this many pixels around it
    lr: float = 1e-5                  # paper §3.2 / authors' code
    batch_size: int = 32
    steps: int = _steps(100_000)
    flip_prob: float = 0.2            # authors' code: horizontal/vertical flips


@dataclass(frozen=True)
class SliceVAEConfig(AutoencoderConfig):
    slice_embedding: bool = True      # paper: l(i) on; authors' code: off (ablation)
    slice_embedding_dim: int = 128
    lpips_weight: float = 0.0         # authors' code: 0.5, needs local LPIPS weights
    lpips_path: str | None = None
    empty_slice_keep: float = 0.1     # authors' code keeps 10% of background-only slices
    # beyond the paper and the authors: > 0 adds a weight-free sharpening term, the L1 of the
    # image channel's 2D spectra weighted towards high frequencies (objectives.frequency_loss)
    frequency_weight: float = _added(0.0)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class VolumeAEConfig(AutoencoderConfig):
    downsampling: int = 4             # paper text (x4); authors' code 8 (192 -> 24)
    # reconstruction check before the UNet trains: the autoencoder's decoded whole-tumour Dice
    # on training volumes (posterior means) must reach this; 0 = report only
    min_dice: float = _reads(0.0)
    discriminator: bool = False       # paper says VAE-GAN; the authors' code had none
    disc_channels: int = 512          # patch discriminator, widest conv
    disc_layers: int = 4
    disc_weight: float = 0.1          # weight of the autoencoder's LS-GAN term
    disc_start: int = 0               # step at which the adversarial term switches on


# -- stage 2: the conditioned 3D latent diffusion model ---------------------------------
@dataclass(frozen=True)
class UNetConfig:
    """A conditioned 3D denoising UNet (``sbldm.models.unet3d``): SBLDM's and the 3D-LDM's."""
    channels: tuple[int, ...] = (64, 128, 256, 512)
    layers_per_block: int = 2         # authors' code: 2 (paper text: 1)
    norm_groups: int = 32
    cond_fusion: str = "scale_shift"  # paper; "add" = authors' code
    embed_dim: int = 512              # time / condition embedding width (authors' code)
    time_proj_dim: int = 128          # sinusoid size of the time embedding
    cond_hidden_dim: int = 256        # tau: 9 -> 256 -> 512 (authors' code)
    mid_layers: int = 2               # resnet blocks at the bottom (132.1M params at paper)


@dataclass(frozen=True)
class ConditionConfig:
    """The tumour condition of SBLDM's latent UNet (the paper's route is each default)."""
    normalization: str = "max"        # authors: over the training max; "zscore"
    subregions: bool = False          # paper: the 9 features; True (with regions) adds the necrosis and enhancing shares
    dropout: float = 0.1              # classifier-free guidance (reference: 0, none)
    spatial_prior: bool = False       # paper: the 9-vector only; True adds the rendered tumour as an input channel


@dataclass(frozen=True)
class DiffusionConfig:
    """A diffusion objective and its optimiser (SBLDM's latent UNet, the 3D-LDM's)."""
    loss: str = "mse"                 # paper; "l1" = authors' code
    prediction_type: str = "epsilon"  # paper and authors; or "v_prediction", "sample" (x0)
                                      # (docs/decisions.md, "Prediction target")
    lr: float = 1e-4
    weight_decay: float = 0.01        # AdamW default, as the authors' code
    batch_size: int = 8
    steps: int = _steps(200_000)


@dataclass(frozen=True)
class SBLDMDiffusionConfig(DiffusionConfig):
    snr_gamma: float = 0.0            # paper: 0 = off; > 0: min-SNR-gamma loss weights
    tumour_weight: float = 0.0        # paper: 0; loss weight 1 + w on the tumour
    ema_decay: float = 0.0            # paper: 0 (no EMA); EMA weights for sampling


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.002
    beta_end: float = 0.02


# -- sampling and evaluation (Table 1 and beyond) ---------------------------------------
@dataclass(frozen=True)
class SamplingConfig:
    sampler: str = "ddim"             # "ddpm" (1000 steps) | "ddim"
    num_inference_steps: int = 50
    eta: float = 0.0                  # true DDIM; the authors' code was stuck at 1
    guidance_scale: float = 1.0       # 1.0 = no classifier-free guidance (also notebook 07's requests)
    steer_steps: int = _added(20)     # DDIM steps of each generation in the steering panel (notebook 08)


@dataclass(frozen=True)
class EvaluationConfig:
    n_samples: int = 100              # synthetic volumes per method (Table 1, Table 2)
    n_samples_ddpm: int = 100         # SBLDM with 1000 DDPM steps (slow on CPU)
    ddpm_steps: int | None = None     # None = every training timestep (the paper's DDPM-1000)
    timing_volumes: int = 3           # timed volumes per method, after one warm-up
    batch_size: int = 4               # volumes sampled at once
    guidance_scale: float = 3.0       # the classifier-free guidance compared with none
    n_adherence: int = 50             # requested feature vectors for conditioning adherence
    n_diversity: int = 20             # volumes in the pairwise MS-SSIM
    ablation_steps: int = 500         # latent-UNet steps of every row of the conditioning ablation (notebook 07)
    ablation_requests: int = 50       # requested tumours per ablation row
    # local MedicalNet weights (.pth) for the Fréchet distance (notebook 04); None -> a
    # project-trained network; and the depth of that MedicalNet ResNet
    medicalnet_path: str | None = _added(None)
    medicalnet_depth: int = _added(10)
    figure_volumes: int = _added(4)   # volumes per row in Figure 2 (notebook 05)
    appearance_examples: int = _added(4)   # tumours shown per set (notebook 09)
    probe_volumes: int = _added(12)   # training volumes noised and denoised in notebook 09's probe
    probe_strengths: tuple[float, ...] = _added((0.1, 0.3, 0.5, 0.7, 1.0))   # how far into the schedule


# -- segmentation study (Table 2) ---------------------------------------------------------
@dataclass(frozen=True)
class NnUNetConfig:
    augmentation: bool = True         # paper: nnU-Net default augmentation; authors' code: NoDA
    fold: str = "all"                 # authors' code: fold "all"; "0".."4" one fold; "5fold" all five
    epochs: int | None = None         # None: nnU-Net's 1000 epochs (paper); smoke/small shorten it
    iterations: int | None = None     # None: nnU-Net's 250 iterations per epoch
    narrow: bool | None = None        # narrow CPU plan (features 8..80); None: on CPU only
    # None: nnU-Net's planned batch, which grows with the data set (5 for 100 volumes at small's size,
    # 10 for 200), so a row with synthetic volumes would also train on more patches; a number fixes it
    # for every row (small: docs/decisions.md, "nnU-Net on CPU")
    batch_size: int | None = None
    check: bool = False               # with the fast backend: confirm real vs real + SBLDM with nnU-Net
    check_seeds: tuple[int, ...] = (0, 1, 2)   # the confirmation's training seeds
    # the confirmation runs where the fast backend finds an effect (a gain or loss in some region);
    # always: whatever the fast backend finds (smoke: so that CI runs the nnU-Net path)
    check_always: bool = False


@dataclass(frozen=True)
class SegmentationConfig:
    backend: str = "nnunet"           # "nnunet" (paper) | "fast" (MONAI 3D U-Net, smoke/small)
    channels: tuple[int, ...] = (16, 32, 64, 128)   # fast backend U-Net widths
    iterations: int = 2000            # fast backend: fixed optimiser-step budget
    batch_size: int = 2
    lr: float = 1e-3
    roi: tuple[int, int, int] = (96, 96, 96)        # sliding-window size at inference
    patch: tuple[int, int, int] | None = None       # fast backend training crop; None: roi
    flip_axes: tuple[int, ...] = ()   # fast backend: random mirroring along these axes (0 = left-right)
    augment_factor: int = 5           # "augmented volumes (x5)" rows
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of every row: mean and spread across seeds
    # each training seed trains on a synthetic set of its own: the same generator, a fresh noise seed
    # (seed + training seed), the same condition distribution, so the spread across seeds holds the
    # synthetic draw's variance too; False: Table 1's one set for every seed
    redraw_synthetic: bool = True
    # the synthetic sets segmenters train on (every training seed's draw, the count sweep's pools) are
    # sampled under bf16 autocast on the CPU (the diffusion generators; no effect on a GPU), 4-8x
    # faster there; Table 1's set stays fp32, and training seed 0 then gets a bf16 draw of its own
    synthetic_bf16: bool = _added(False)
    # the sequences the segmenter reads, of those loaded (``modalities``): None = every one of them;
    # ("flair",) = the FLAIR alone (a four-sequence chain's FLAIR-only comparison)
    sequences: tuple[str, ...] | None = _added(None)
    # the synthetic-count sweep (notebook 11; the paper's plateau beyond 100 synthetic volumes): real plus
    # each of these many synthetic volumes at the smallest and the full real-set size; () skips it
    count_sweep: tuple[int, ...] = (0, 50, 100, 200, 400)
    # the fast backend's budget comes from a learning curve: a real-only run on the training split minus
    # a validation part (val_fraction), validated every curve_every steps up to iterations; the budget
    # is the first step within plateau_tolerance of the best validation Dice, applied to every row
    # (all of whose sets include the whole real training split)
    val_fraction: float = 0.2
    curve_every: int = 250
    plateau_tolerance: float = 0.01
    # the quality-filtered SBLDM row keeps a synthetic volume only if its mask is non-empty, its
    # centre lies within filter_max_centre_distance voxels of the requested one, and its volume
    # within filter_max_volume_error (relative) of the requested volume
    filter_max_centre_distance: float = 8.0
    filter_max_volume_error: float = 0.5
    scarce_sizes: tuple[int, ...] = (10, 25, 50, 100)  # real-set sizes of the data-scarce regime
    # the data-scarce regime without leakage (notebooks 10 and 11): at every size below n_train a latent
    # UNet of its own is trained on that many real volumes (the slice VAE is shared); the shared VAE is
    # checked against one trained on the smallest subset, both for scarce_vae_check_steps steps
    scarce_vae_check_steps: int = 100_000
    # protocols of using synthetic data (notebook 11): the "other ratio" row mixes this fraction of
    # the synthetic set with the real volumes; "pre-train, fine-tune" spends this fraction of the
    # budget on synthetic volumes only, the rest on the real ones (same total budget as every row)
    protocol_synthetic_fraction: float = 0.5
    pretrain_fraction: float = 0.5
    nnunet: NnUNetConfig = _section(NnUNetConfig, prefix="nnunet_")


# -- baselines (paper §3.3; notebook 03) ----------------------------------------------------
@dataclass(frozen=True)
class LSGANConfig:
    """3D-LSGAN, as the authors' train_lsgan.py: z -> FC -> (g_channels, shape / 2**n) -> n x
    (nearest up x2, conv3 [, BN, ReLU]) halving the width, the last conv to 2 channels + tanh;
    discriminator of d_layers 3D convs k4 s2 (BN, LeakyReLU 0.2)."""
    latent_dim: int = 2048
    g_channels: int = 512
    upsamplings: int = 5              # 192x192x96 / 2**5 = 6x6x3 after the FC layer
    d_channels: int = 1024            # widest discriminator conv (authors' code: 1024)
    d_layers: int = 6                 # convs k4 s2, widths d/2**(L-2) .. d, then d -> 1
    lr: float = 2e-4
    beta1: float = 0.5                # Adam betas (0.5, 0.999), as the authors
    grad_clip: float = 5.0            # gradient-norm clip of G and D (0 = off)
    label_noise: float = 0.05         # real labels 1 - 0.05 n, fake labels 0.05 n (authors)
    batch_size: int = 2
    steps: int = _steps(100_000)      # authors: 2000 epochs of 50 steps, sampled at ~1130
    flip_prob: float = 0.2            # random flips of both in-plane axes (authors' rerun)
    # stabilisers beyond the authors' recipe (docs/paper_vs_code.md; docs/decisions.md, "Baselines")
    d_lr: float | None = None         # the discriminator's own learning rate (None = lr)
    instance_noise: float = 0.0       # std of Gaussian noise on D's inputs, annealed to 0
    # checkpoint selection on the training split only: every select_every steps (0 = off: the last
    # step is the model) select_samples volumes from fixed noise are scored by their mask-feature
    # distance to the training tumours; the best-scoring generator is kept
    select_every: int = 0
    select_samples: int = 32


@dataclass(frozen=True)
class LDM3DConfig:
    """3D-LDM: a 3D KL autoencoder on whole (image, mask) volumes, then an unconditional 3D
    UNet (``ConditionedUNet3D`` used without condition) on its latent scaled by 1/std."""
    ae: VolumeAEConfig = _section(lambda: VolumeAEConfig(channels=(64, 128, 256, 512), batch_size=2),
                                  "ldm3d_ae", prefix="ae_",
                                  rename={"flip_prob": "flip_prob", "disc_channels": "disc_channels",
                                          "disc_layers": "disc_layers", "disc_weight": "disc_weight",
                                          "disc_start": "disc_start"})
    # authors' trained baseline; Table 1's 728M counts 128..1024
    unet: UNetConfig = _section(UNetConfig, "ldm3d_unet", prefix="unet_")
    diffusion: DiffusionConfig = _section(lambda: DiffusionConfig(batch_size=2), "ldm3d_unet", prefix="diffusion_")


# -- how the training loops run -------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionConfig:
    """Every mixed-precision choice in one place."""
    training: str = _reads("no", *_ALL)               # "no" | "bf16" | "fp16" (GPU only): every training stage
    diffusion: str | None = _reads(None, "diffusion")  # SBLDM's latent UNet: None = training; "bf16" on CPU too
    segmentation: str | None = _reads(None)           # fast backend: None/"no" fp32; "bf16" autocast (convolutions only)
    adherence_bf16: bool = _reads(False)              # sample the adherence requests under bf16 autocast on CPU


@dataclass(frozen=True)
class TrainingLoopConfig:
    checkpoint_every: int = 1000
    log_every: int = 50


# -- beyond the paper: SBLDM of the four BraTS sequences (notebook 12) ------------------
@dataclass(frozen=True)
class FourSequencesConfig:
    # the four-sequence slice VAE's latent channels, chosen by a reconstruction check: each
    # candidate trains check_steps on the training split less check_fraction of it and
    # reconstructs that held-out part; the fewest channels whose PSNR is within psnr_tolerance
    # dB of the best candidate's on every sequence, and whose sub-region errors on T1ce and
    # FLAIR are within region_tolerance (relative) of the best, win
    latent_candidates: tuple[int, ...] = _added((4, 8))
    check_steps: int = _added(1000)
    check_fraction: float = _added(0.2)
    psnr_tolerance: float = _added(0.5)
    region_tolerance: float = _added(0.1)


@dataclass(frozen=True)
class Config:
    scale: str
    seed: int = _reads(0, *_ALL)
    data: DataConfig = _section(DataConfig, rename={"skip_unlabelled": "data_skip_unlabelled"})
    vae: SliceVAEConfig = _section(SliceVAEConfig, "vae", prefix="vae_")
    unet: UNetConfig = _section(UNetConfig, "diffusion", prefix="unet_")
    condition: ConditionConfig = _section(ConditionConfig, "diffusion", prefix="condition_",
                                          rename={"dropout": "unet_cond_dropout",
                                                  "spatial_prior": "unet_spatial_prior"})
    diffusion: SBLDMDiffusionConfig = _section(SBLDMDiffusionConfig, "diffusion", prefix="diffusion_")
    schedule: ScheduleConfig = _section(ScheduleConfig, "diffusion", "ldm3d_unet")
    sampling: SamplingConfig = _section(SamplingConfig)
    evaluation: EvaluationConfig = _section(EvaluationConfig, prefix="eval_",
                                            rename={"ablation_steps": "ablation_steps",
                                                    "ablation_requests": "ablation_requests"})
    segmentation: SegmentationConfig = _section(SegmentationConfig, prefix="seg_",
                                                rename={"scarce_vae_check_steps": "scarce_vae_check_steps"})
    lsgan: LSGANConfig = _section(LSGANConfig, "lsgan3d", prefix="lsgan_")
    ldm3d: LDM3DConfig = _section(LDM3DConfig, prefix="ldm3d_")
    precision: PrecisionConfig = _section(PrecisionConfig,
                                          rename={"training": "mixed_precision",
                                                  "diffusion": "diffusion_mixed_precision",
                                                  "segmentation": "seg_mixed_precision",
                                                  "adherence_bf16": "eval_adherence_bf16"})
    training: TrainingLoopConfig = _section(TrainingLoopConfig)
    four: FourSequencesConfig = _section(FourSequencesConfig, prefix="four_")

    def __getattr__(self, name: str):
        # called only when ``name`` is not a section or a property: the flat name of a leaf
        path = _FLAT.get(name)
        if path is None:
            raise AttributeError(f"{type(self).__name__!r} has no field {name!r}")
        value = self
        for part in path:
            value = getattr(value, part)
        return value

    @property
    def vae_downsampling(self) -> int:
        return self.vae.downsampling

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.vae.downsampling
        x, y, z = self.data.volume_shape
        return (self.vae.latent_channels, x // f, y // f, z)

    def to_dict(self) -> dict[str, Any]:
        """``{"scale": ..., <flat name>: value}`` for every leaf."""
        return {"scale": self.scale, **{name: getattr(self, name) for name in _FLAT}}

    def hash(self) -> str:
        """Short stable hash of every field: identifies the configuration in run records.
        Fields added later (``_added``) count only when set away from their default; fields
        removed (``REMOVED_FIELDS``) count at the value they always had."""
        values = {k: v for k, v in self.to_dict().items() if k not in _ADDED_AT_DEFAULT or v != _ADDED_AT_DEFAULT[k]}
        blob = json.dumps({**REMOVED_FIELDS, **values}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (flat names) applied and checked, as ``resolve`` checks them."""
        values = self.to_dict()
        scale = values.pop("scale")
        return _make(scale, {**values, **changes})


@dataclass(frozen=True)
class FlatField:
    """One leaf of the config under its flat name: where it lives, who reads it."""
    name: str
    path: tuple[str, ...]
    stages: tuple[str, ...]
    extends: bool
    default: Any
    hint: Any
    added: bool = False


def _walk(cls, path: tuple[str, ...], outer: str, prefix: str, stages: tuple[str, ...],
          rename: dict[str, str], default_obj) -> list[FlatField]:
    """The leaves of section ``cls`` at ``path``: named ``outer + prefix + leaf``, or
    ``outer + rename[leaf]`` (``outer``: the prefixes of the sections around it)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "scale":
            continue
        meta = f.metadata
        value = getattr(default_obj, f.name)
        if meta.get("section"):
            out += _walk(hints[f.name], path + (f.name,), outer + prefix, meta["prefix"],
                         stages + meta["stages"], meta["rename"], value)
        else:
            out.append(FlatField(name=outer + rename.get(f.name, prefix + f.name), path=path + (f.name,),
                                 stages=meta["stages"] if "stages" in meta else stages,
                                 extends=bool(meta.get("extends")), default=value, hint=hints[f.name],
                                 added=bool(meta.get("added"))))
    return out


_FIELDS: tuple[FlatField, ...] = tuple(_walk(Config, (), "", "", (), {}, Config(scale="paper")))
_FLAT: dict[str, tuple[str, ...]] = {f.name: f.path for f in _FIELDS}
_ADDED_AT_DEFAULT = {f.name: f.default for f in _FIELDS if f.added}
assert len(_FLAT) == len(_FIELDS), "two config leaves share a flat name"

#: fields removed because nothing read them: hashed at the only value they ever had, so a
#: configuration's hash (and every run record naming it) stays what it was
REMOVED_FIELDS = {"num_workers": 0}


def fields() -> tuple[FlatField, ...]:
    """Every leaf of ``Config`` under its flat name, in section order."""
    return _FIELDS


def flat_name(path: tuple[str, ...] | str) -> str:
    """The flat name of the leaf at ``path`` (``("ldm3d", "ae", "lr")`` -> ``ldm3d_ae_lr``)."""
    path = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
    for f in _FIELDS:
        if f.path == path:
            return f.name
    raise ValueError(f"no config leaf at {'.'.join(path)!r}")


def _make(scale: str, values: dict[str, Any]) -> Config:
    """A checked ``Config`` from flat ``values`` (lists become tuples)."""
    nested: dict = {}
    for name, value in values.items():
        if isinstance(value, list):
            value = tuple(value)
        *parents, leaf = _FLAT[name]
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def build(obj, changes: dict):
        kwargs = {k: build(getattr(obj, k), v) if isinstance(v, dict) else v for k, v in changes.items()}
        return dataclasses.replace(obj, **kwargs)

    base = Config(scale=scale)
    cfg = build(base, nested)
    _validate(cfg)
    return cfg


def stage_fields(stage: str) -> tuple[str, ...]:
    """The config fields a training stage's checkpoint must agree on to be resumed: those
    declared as read by the stage or by a stage upstream of it (``_reads`` and ``_section``
    metadata), except the step counts (a larger count extends a run). Everything about
    sampling, evaluation and segmentation is left out."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {', '.join(STAGES)}")
    wanted = {stage, *UPSTREAM[stage]}
    return tuple(f.name for f in _FIELDS if wanted & set(f.stages) and not f.extends)


def stages_reading(name: str) -> tuple[str, ...]:
    """The training stages that declare ``name`` as one of their fields."""
    for f in _FIELDS:
        if f.name == name:
            return f.stages
    raise ValueError(f"unknown config field {name!r}")


#: fields renamed since a run record or checkpoint may have been written: old -> new name
RENAMED_FIELDS = {"diffusion_tumor_weight": "diffusion_tumour_weight"}


def current_names(saved: dict) -> dict:
    """A saved config dict with fields renamed since (``RENAMED_FIELDS``) under their new
    names, and fields removed since (``REMOVED_FIELDS``) left out."""
    return {RENAMED_FIELDS.get(k, k): v for k, v in saved.items() if k not in REMOVED_FIELDS}


def resume_conflicts(stage: str, saved: dict, cfg: "Config") -> list[str]:
    """``field: saved -> now`` for every stage field where a checkpoint's saved config and
    ``cfg`` differ; a field the checkpoint predates counts as its default value."""
    saved = current_names(saved)
    defaults = {f.name: f.default for f in _FIELDS}
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
        seg_seeds=(0, 1), seg_curve_every=4, seg_scarce_sizes=(3, 6), seg_nnunet_check=True, seg_count_sweep=(0, 2, 4),
        seg_nnunet_check_seeds=(0,), seg_nnunet_check_always=True, seg_synthetic_bf16=True,
        scarce_vae_check_steps=10, four_check_steps=10,
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
        # the data-scarce sizes: the smallest and the full set (the middle size costs ~1.3 h: "Seeds")
        seg_nnunet_check=True, seg_scarce_sizes=(10, 100), scarce_vae_check_steps=1500,
        seg_seeds=tuple(range(10)),                      # the training run is the unit: docs/decisions.md, "Seeds"
        seg_synthetic_bf16=True,                         # bf16 synthetic draws: docs/decisions.md, "Seeds"
        seg_nnunet_epochs=40, seg_nnunet_iterations=25,  # nnU-Net budget: docs/decisions.md, "nnU-Net on CPU"
        seg_nnunet_batch_size=5,                         # the batch nnU-Net plans for the 100 real volumes
        # the Table 1 sampling budget: docs/decisions.md, "The small preset's sampling and baseline budgets"
        # 20 DDPM volumes: the paired interval on DDIM's SSIM loss against DDPM needs them (same section)
        eval_n_samples=100, eval_n_samples_ddpm=20, eval_timing_volumes=1, eval_batch_size=10,
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
    valid = set(_FLAT)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"unknown config parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(sorted(valid))}"
        )
    # JSON / papermill hand lists where the dataclass keeps tuples (``_make`` converts them).
    return _make(scale, {**_PRESETS[scale], **overrides})


def structure(scale: str) -> dict[str, Any]:
    """The preset's structural choices: every field whose value is a word or a switch (str or
    bool: the segmentation backend, the label mode, which checks run, ...), without its
    sizes, step counts or rates. ``resolve("smoke", **structure("paper"))`` runs the paper's
    method at the smoke preset's sizes, which a test does through notebook 11."""
    cfg = resolve(scale)
    return {f.name: getattr(cfg, f.name) for f in _FIELDS if isinstance(getattr(cfg, f.name), (str, bool))}


def _check_types(cfg: Config) -> None:
    """Every field has the type its declaration says (ints stay ints, a float field takes
    an int), step counts and batch sizes are positive, learning rates too."""
    for f in _FIELDS:
        value, hint = getattr(cfg, f.name), f.hint
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
    _validate_modalities(cfg.modalities)
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
    if cfg.vae_frequency_weight < 0:
        raise ValueError(f"vae_frequency_weight must be >= 0, got {cfg.vae_frequency_weight}")
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
    _validate_four_sequences(cfg)
    if cfg.n_train < 1 or cfg.n_test < 0:
        raise ValueError(f"n_train must be >= 1 and n_test >= 0, got {cfg.n_train}, {cfg.n_test}")


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a config written by ``Config.to_dict`` (e.g. from a run record)."""
    d = current_names(d)
    scale = d.pop("scale")
    return resolve(scale, **d)


#: the sequences a case may hold, by their BraTS 2023 names (T1, T1ce, T2, FLAIR); "flair" is
#: the paper's name for "t2f"
SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
SEQUENCE_ALIASES = {"flair": "t2f"}


def _validate_modalities(modalities) -> None:
    names = [SEQUENCE_ALIASES.get(m, m) for m in modalities]
    unknown = [m for m in modalities if SEQUENCE_ALIASES.get(m, m) not in SEQUENCES]
    if not modalities or unknown:
        raise ValueError(f"modalities={tuple(modalities)!r} is not valid: name one or more of "
                         f"{', '.join(SEQUENCES)} (T1, T1ce, T2, FLAIR; 'flair' is 't2f')")
    if len(set(names)) != len(names):
        raise ValueError(f"modalities={tuple(modalities)!r} names a sequence twice ('flair' is 't2f')")


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
    if cfg.seg_sequences is not None:
        loaded = [SEQUENCE_ALIASES.get(m, m) for m in cfg.modalities]
        wanted = [SEQUENCE_ALIASES.get(m, m) for m in cfg.seg_sequences]
        if not wanted or len(set(wanted)) != len(wanted) or not set(wanted) <= set(loaded):
            raise ValueError(f"seg_sequences={tuple(cfg.seg_sequences)} must name distinct sequences among the loaded "
                             f"modalities {tuple(cfg.modalities)} (or be None: all of them)")
    if any(int(k) < 0 for k in cfg.seg_count_sweep) or len(set(cfg.seg_count_sweep)) != len(cfg.seg_count_sweep):
        raise ValueError(f"seg_count_sweep must be distinct numbers of synthetic volumes >= 0 (() skips the sweep), "
                         f"got {cfg.seg_count_sweep}")
    if cfg.seg_count_sweep and 0 not in cfg.seg_count_sweep:
        raise ValueError(f"seg_count_sweep must include 0 (real only: every count is tested against it), "
                         f"got {cfg.seg_count_sweep}")
    if not cfg.seg_nnunet_check_seeds or len(set(cfg.seg_nnunet_check_seeds)) != len(cfg.seg_nnunet_check_seeds):
        raise ValueError(f"seg_nnunet_check_seeds must name one or more distinct training seeds, "
                         f"got {cfg.seg_nnunet_check_seeds}")
    if cfg.scarce_vae_check_steps < 1:
        raise ValueError(f"scarce_vae_check_steps must be >= 1, got {cfg.scarce_vae_check_steps}")
    for name in ("seg_protocol_synthetic_fraction", "seg_pretrain_fraction"):
        if not 0.0 < getattr(cfg, name) < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {getattr(cfg, name)}")
    for name in ("seg_plateau_tolerance", "seg_filter_max_centre_distance", "seg_filter_max_volume_error"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _validate_four_sequences(cfg: Config) -> None:
    c = cfg.four_latent_candidates
    if not c or any(int(k) < 1 for k in c) or len(set(c)) != len(c):
        raise ValueError(f"four_latent_candidates must be distinct numbers of latent channels >= 1, got {c}")
    if cfg.four_check_steps < 1:
        raise ValueError(f"four_check_steps must be >= 1, got {cfg.four_check_steps}")
    if not 0.0 < cfg.four_check_fraction < 1.0:
        raise ValueError(f"four_check_fraction must lie in (0, 1), got {cfg.four_check_fraction}")
    for name in ("four_psnr_tolerance", "four_region_tolerance"):
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
