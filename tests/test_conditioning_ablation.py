"""Notebook 07's ablation keeps each row's scores beside its weights and reads them back
only while everything they were computed from is unchanged."""

import json

import pytest
import torch

from model_helpers import REGIONS, make_prepared, tiny_cfg
from sbldm.data.cohort import load_prepared
from sbldm.experiments import conditioning_ablation as ablation

ROWS = {"paper route": {"diffusion_mixed_precision": "no"}, "small route": {**ablation.SMALL_ROUTE}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sbldm.diffusion.latents import encode_dataset
    from sbldm.models.vae import build_vae

    root = tmp_path_factory.mktemp("ablation")
    prepared = make_prepared(root)
    train, test = load_prepared(prepared, "train"), load_prepared(prepared, "test")
    cfg = tiny_cfg(**REGIONS, diffusion_steps=2, checkpoint_every=1)
    torch.manual_seed(0)
    vae = build_vae(cfg.vae, cfg.tumour_labels).eval()
    latents = encode_dataset(vae, train.images, train.labels, progress=False)
    return cfg, train, test, vae, latents, root


def _run(setup, work, **kw):
    cfg, train, test, vae, latents, _ = setup
    logs = []
    rows = ablation.run(cfg, train, test, vae, latents, work, rows=ROWS, steps=2, n_requests=2,
                        num_inference_steps=2, batch_size=2, log=logs.append, **kw)
    return rows, logs


def test_a_rerun_reads_the_rows_back_and_a_change_recomputes_them(setup):
    work = setup[-1] / "rows"
    first, logs = _run(setup, work)
    assert len(first) == 3 and not any("read back" in line for line in logs)
    kept = work / "small_route" / ablation.EVALUATION_FILE
    assert kept.is_file() and json.loads(kept.read_text())["row"]["row"] == "small route"

    again, logs = _run(setup, work)
    assert sum("read back" in line for line in logs) == 2
    assert json.dumps(again[:2]) == json.dumps(first[:2])             # the very scores (NaN too), not new ones

    # other requests (another sampling budget): sampled and scored again, and the file follows
    other, logs = _run(setup, work, guidance_scale=2.0)
    assert not any("read back" in line for line in logs)
    assert json.loads(kept.read_text())["key"]["guidance_scale"] == 2.0


def test_a_torn_or_foreign_file_is_recomputed_not_trusted(tmp_path):
    assert ablation._read_evaluation(tmp_path, {"a": 1}) is None                     # missing
    (tmp_path / ablation.EVALUATION_FILE).write_text("{not json")
    assert ablation._read_evaluation(tmp_path, {"a": 1}) is None                     # torn
    (tmp_path / ablation.EVALUATION_FILE).write_text(json.dumps({"key": {"a": 2}, "row": {"row": "x"}}))
    assert ablation._read_evaluation(tmp_path, {"a": 1}) is None                     # other inputs
    assert ablation._read_evaluation(tmp_path, {"a": 2}) == {"row": "x"}


def test_the_figure_shows_the_insides_beside_the_real_split():
    from sbldm import plotting

    rows = [{"row": "a", "empty_fraction": 0.0, "spearman_volume": 0.9, "centre_distance": 1.0,
             "chance_centre_distance": 12.0, "relative_volume_error": 0.2, "chance_relative_volume_error": 0.8,
             "frechet_latent": 0.3, "dark_core_share": 0.2, "multi_component_fraction": 0.5,
             "w_over_spread_necrosis": 0.6, "w_over_spread_oedema": 1.0, "w_over_spread_enhancing": 1.4},
            {"row": "real test split (reference)", "frechet_latent": 0.07, "dark_core_share": 0.36,
             "multi_component_fraction": 0.61, "w_over_spread_necrosis": 0.3, "w_over_spread_oedema": 0.15,
             "w_over_spread_enhancing": 0.15}]
    fig = plotting.ablation_figure(rows)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 8
    mean_w = panels[7]
    assert mean_w.patches[0].get_width() == pytest.approx(1.0)                       # (0.6 + 1.0 + 1.4) / 3
    real = [line.get_xdata()[0] for line in mean_w.lines if line.get_label() == "real test split"]
    assert real == [pytest.approx(0.2)]                                               # (0.3 + 0.15 + 0.15) / 3
    # rows without the appearance columns keep the one row of adherence panels
    bare = [{k: v for k, v in rows[0].items() if k in ("row", "empty_fraction", "spearman_volume", "centre_distance",
                                                       "chance_centre_distance", "relative_volume_error",
                                                       "chance_relative_volume_error")}]
    assert len([ax for ax in plotting.ablation_figure(bare).axes if ax.get_visible()]) == 4


def test_what_each_remedy_bought_is_its_difference_to_the_small_route():
    base = {"row": "small route (z-scored)", "empty_fraction": 0.0, "frechet_latent": 0.2, "dark_core_share": 0.2,
            "w_over_spread_necrosis": 1.0, "w_over_spread_oedema": 1.0, "w_over_spread_enhancing": 1.0,
            "train_time_s": 100.0, "steps": 4, "n_requests": 2, "centre_distance": 1.0, "chance_centre_distance": 9.0,
            "spearman_volume": 0.9, "relative_volume_error": 0.2, "chance_relative_volume_error": 0.8,
            "ms_ssim_pairwise": 0.7, "multi_component_fraction": 0.1, "core_share": 1.0}
    remedy = {**base, "row": "+ remedy", "frechet_latent": 0.15, "dark_core_share": 0.5,
              "w_over_spread_necrosis": 0.4, "w_over_spread_oedema": 0.7, "w_over_spread_enhancing": 1.0,
              "train_time_s": 200.0}
    paper = {**base, "row": "paper route", "frechet_latent": 9.0}
    ref = {"row": "real test split (reference)", "empty_fraction": None, "frechet_latent": 0.05,
           "dark_core_share": 0.4, "ms_ssim_pairwise": 0.77, "multi_component_fraction": 0.6}
    (b,) = ablation.remedies_bought([paper, base, remedy, ref])       # the rows before the small route are not remedies
    assert b["row"] == "+ remedy" and b["frechet"] == pytest.approx(-0.05)
    assert b["dark_gap"] == pytest.approx(0.1 - 0.2)                  # |0.5 - 0.4| - |0.2 - 0.4|
    assert b["w_mean"] == pytest.approx(0.7 - 1.0)
    assert ablation.remedies_bought([base, remedy]) == []             # no reference row: nothing to measure against
    assert "+ remedy: Fréchet -0.050" in ablation.summary([paper, base, remedy, ref], "small")
