"""The slice VAE's weight-free sharpening term and the sharpness measures beside it:
checked against images whose detail is known (a blurred copy has less of it)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sbldm import metrics
from sbldm.training.objectives import frequency_loss


def _texture(seed=0, shape=(2, 1, 32, 32)):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, shape).astype(np.float32)


def test_the_frequency_term_charges_lost_fine_detail_more_than_lost_coarse_detail():
    x = torch.from_numpy(_texture())
    assert frequency_loss(x, x).item() == pytest.approx(0.0, abs=1e-7)
    smooth = ndimage.gaussian_filter(x.numpy(), (0, 0, 1.0, 1.0))
    blurred, high_pass = torch.from_numpy(smooth), torch.from_numpy(x.numpy() - smooth)
    # blurring loses the fine detail, the high-pass copy the coarse: the weight charges the first more
    lost_fine, lost_coarse = frequency_loss(blurred, x).item(), frequency_loss(high_pass, x).item()
    assert lost_fine > 2 * lost_coarse > 0
    # compared with a plain L1 of the spectra, which charges both alike up to their energy
    plain = [(torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(x, norm="ortho")).abs().mean().item()
             for a in (blurred, high_pass)]
    assert lost_fine / lost_coarse > plain[0] / plain[1]
    # a sharp edge in the wrong place costs: the phase counts, not only the amplitude
    shifted = torch.roll(x, 3, dims=-1)
    assert frequency_loss(shifted, x).item() > 0.5 * frequency_loss(torch.zeros_like(x), x).item()


def test_sharpness_measures_fall_for_a_blurred_copy_and_hold_for_the_volume_itself():
    rng = np.random.default_rng(1)
    vol = rng.normal(0, 0.3, (2, 24, 24, 6))
    region = np.ones(vol.shape, bool)
    blurred = ndimage.gaussian_filter(vol, (0, 1.2, 1.2, 0))
    assert metrics.laplacian_energy(vol, region) > 2 * metrics.laplacian_energy(blurred, region)
    assert metrics.high_frequency_share(vol, region) > 2 * metrics.high_frequency_share(blurred, region)
    # white noise spreads its energy evenly: the share above half Nyquist is the area there
    fy = np.abs(np.fft.fftfreq(24))[:, None]
    area = float(np.mean(np.sqrt(fy ** 2 + fy.T ** 2) > 0.25))
    assert metrics.high_frequency_share(vol, region) == pytest.approx(area, abs=0.05)
    # a linear ramp has no Laplacian inside
    ramp = np.broadcast_to(np.arange(24.0)[None, :, None, None], (1, 24, 24, 2))
    assert metrics.laplacian_energy(ramp, np.ones(ramp.shape, bool)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.laplacian_energy(vol, region[:1])


@pytest.mark.slow
def test_the_sharpness_experiment_trains_each_row_and_scores_it_against_real(tmp_path):
    from model_helpers import make_prepared, tiny_cfg

    from sbldm.data.cohort import load_prepared
    from sbldm.experiments import vae_sharpness

    prepared = make_prepared(tmp_path / "cohort")
    train = load_prepared(prepared, "train")
    cfg = tiny_cfg(vae_steps=2, checkpoint_every=2)
    rows = vae_sharpness.rows(cfg, train, tmp_path / "work", weights=(0.5,), n_check=2, progress=False)
    assert [r["frequency_weight"] for r in rows] == [0.0, 0.5]
    assert rows[0]["row"] == vae_sharpness.BASELINE
    for r in rows:
        assert np.isfinite(r["psnr"]) and r["laplacian_ratio"] > 0 and r["high_frequency_ratio"] > 0
    # the weighted row's training logged the term; the baseline's did not
    import json
    logs = {p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
            for p in (tmp_path / "work").glob("*/log.jsonl")}
    assert len(logs) == 2
    assert any("frequency" in rec for log in logs.values() for rec in log)
    assert not all(any("frequency" in rec for rec in log) for log in logs.values())
