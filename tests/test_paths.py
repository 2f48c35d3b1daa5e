"""The names files and folders get from ``sbldm.paths.slug`` stay what runs already wrote."""

from sbldm.paths import REPO_ROOT, project_root, slug


def test_the_repository_root_holds_the_package_and_the_notebooks():
    assert (REPO_ROOT / "sbldm" / "paths.py").is_file() and project_root() == REPO_ROOT


def test_the_slug_rules_give_the_names_runs_already_wrote():
    from sbldm.evaluation.table1 import ROWS
    from sbldm.experiments.conditioning_ablation import ROWS as ABLATION_ROWS
    from sbldm.runner.bench import device_file_part

    # Table 1 sample caches (work/<run>/samples/<stem>.npz)
    assert [slug(row, drop="()-", lower=True) for row, _, _ in ROWS] == ["3dlsgan", "3dldm", "sbldm_ddpm", "sbldm_ddim"]
    # the conditioning ablation's row folders (work/<run>/ablation/<row>/, resumable)
    assert [slug(name, strip=True, lower=True, max_len=60) for name in ABLATION_ROWS] == [
        "paper_route__bf16_autocast", "small_route__z_scored_conditions___spatial_prior",
        "small_route_without_the_spatial_prior", "min_snr_weighting__gamma_5", "x0_target",
        "sub_region_condition__necrosis_and_enhancing_shares", "small_route__twice_the_budget"]
    # benchmark files (results/bench/<scale>_<device>_<kind>.json)
    assert device_file_part("CPU (x86_64, 2 threads)") == "cpu-x86-64-2-threads"
    assert device_file_part("NVIDIA H200") == "nvidia-h200"
    # data and pipeline folder names in run names: case kept, one "_" per character
    assert slug("BraTS 2021 (train).v2", max_len=40) == "BraTS_2021__train__v2"
    assert slug("x" * 50, max_len=40) == "x" * 40 and slug("") == ""
