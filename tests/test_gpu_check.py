"""The GPU check's CPU logic: the refusal, the targets, and its files (tiny preset on the CPU)."""

import json

import pytest
import torch

from sbldm.runner import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_it_refuses_in_one_line_without_a_gpu(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err
    assert not any(tmp_path.iterdir())                   # nothing written


def test_it_refuses_a_cpu_run_of_a_real_preset_and_bad_arguments(capsys):
    assert gpu_check.main(["--device", "cpu", "--scale", "paper"]) == 2
    assert "only with --scale smoke" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--scale", "smoke", "--variants", "plain", "bf17"])
    assert "bf17" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--scale", "smol"])


def _result(bf16_s, sbldm_mib, pixel, ldm_ae, ldm_unet):
    def row(comp, value):
        return {"component": comp, **({"error": value} if isinstance(value, str) else {"peak_memory_MiB": value})}

    return {"ddim": [{"variant": "plain", "total_s_per_volume": 1.0},
                     {"variant": "bf16", "total_s_per_volume": bf16_s}],
            "training": [row("sbldm_unet", sbldm_mib), row("pixel_ddpm_unet", pixel),
                         row("ldm3d_autoencoder", ldm_ae), row("ldm3d_unet", ldm_unet)]}


def test_targets_are_met_or_missed_by_the_numbers():
    met = gpu_check.targets(_result(0.2, 1000, 5000, 2500, 2000))
    assert [t["met"] for t in met] == [True, True, True, True]
    assert met[1]["measured"] == pytest.approx(0.2)
    missed = gpu_check.targets(_result(0.3, 1000, 3000, 1500, 2000))
    assert [t["met"] for t in missed] == [False, False, False, True]
    # a pixel-space DDPM that does not fit the GPU at all meets the memory target
    oom = gpu_check.targets(_result(0.2, 1000, "CUDA out of memory. Tried to allocate 40 GiB", 2500, 2500))
    assert oom[1]["met"] is True and "out of memory" in oom[1]["measured"]


@pytest.mark.slow
def test_a_tiny_cpu_run_writes_its_json_and_markdown(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--scale", "smoke", "--repeats", "1", "--train-steps", "2",
                           "--variants", "plain", "bf16", "--out", str(tmp_path)]) == 0
    (js,) = tmp_path.glob("smoke_cpu-*_gpucheck.json")
    result = json.loads(js.read_text())
    assert [r["variant"] for r in result["ddim"]] == ["plain", "bf16"]
    assert [r["dtype"] for r in result["ddpm"]] == ["fp32", "bf16"]
    comps = [r["component"] for r in result["training"]]
    assert comps[0] == "sbldm_unet" or "sbldm_unet" in comps
    by = {r["component"]: r for r in result["training"]}
    assert by["sbldm_unet"]["peak_memory_MiB_vs_sbldm"] == pytest.approx(1.0)
    assert by["pixel_ddpm_unet"]["step_s"] > 0 and "peak_memory_MiB_vs_sbldm" in by["pixel_ddpm_unet"]
    smoke = result["training_smoke"]
    assert smoke["vae"]["s_per_step"] > 0 and smoke["diffusion"]["s_per_step"] > 0 and smoke["sample_finite"]
    assert {t["target"].split(" <=")[0] for t in result["targets"]} >= {"DDIM-50 bf16 per volume"}
    md = js.with_suffix(".md").read_text()
    assert "### GPU check" in md and "Targets:" in md and "Training smoke" in md
