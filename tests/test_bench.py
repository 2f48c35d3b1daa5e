"""The benchmark's CPU memory measurement counts what the measured block allocates, not
the libraries loaded before it."""

import json
import sys

import numpy as np
import pytest

from sbldm.runner.bench import _rss_kib, cpu_peak_increase

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_peak_increase_sees_an_allocation_of_known_size_freed_before_the_end():
    size = 300 * 2 ** 20
    with cpu_peak_increase() as mem:
        a = np.ones(size, np.uint8)        # touched, so resident
        del a                              # freed: only the high-water mark remembers it
    assert mem.exact
    assert 0.9 * size < mem.increase < 1.3 * size
    assert mem.peak >= mem.baseline + mem.increase - 1


def test_peak_increase_ignores_memory_held_before_the_block():
    held = np.ones(300 * 2 ** 20, np.uint8)    # a "library" loaded before the measurement
    with cpu_peak_increase() as mem:
        b = np.ones(20 * 2 ** 20, np.uint8)
        del b
    assert mem.increase < 80 * 2 ** 20             # the 300 MB already held are not counted
    assert mem.baseline >= held.nbytes              # but they are in the baseline
    assert _rss_kib("VmRSS") * 1024 >= held.nbytes


def test_extrapolation_is_linear_in_voxels_through_the_two_smaller_sizes():
    from sbldm.runner.bench import extrapolate

    def row(shape):                                 # memory 100 MiB + 2 MiB per 1000 voxels, time likewise
        v = float(np.prod(shape))
        return {"volume_shape": list(shape), "step_s": 0.5 + v / 1e4, "peak_memory_MiB": 100 + 2 * v / 1000}

    est = extrapolate([row((8, 8, 4)), row((16, 16, 8)), {"error": "x"}], (32, 32, 16))
    v = 32 * 32 * 16
    assert est["step_s"] == pytest.approx(0.5 + v / 1e4) and est["peak_memory_MiB"] == pytest.approx(100 + 2 * v / 1000)
    assert est["from_shapes"] == [[8, 8, 4], [16, 16, 8]]
    with pytest.raises(ValueError, match="two sizes"):
        extrapolate([row((8, 8, 4))], (32, 32, 16))


def test_a_network_that_runs_out_is_measured_smaller_and_scaled_up(monkeypatch):
    from types import SimpleNamespace

    from sbldm.runner import bench

    def fake(comp, args, device, variant="plain", shape=None):
        v = float(np.prod(shape))
        if v > 16 * 16 * 8:
            return {"component": comp, "error": "can't allocate memory", "out_of_memory": True}
        return {"component": comp, "unit": f"batch of 1 volumes 2x{'x'.join(map(str, shape))}", "params_M": 1.0,
                "volume_shape": list(shape), "step_s": v / 1e3, "peak_memory_MiB": 10 + v / 100,
                "memory_kind": "CPU peak RSS above baseline"}

    monkeypatch.setattr(bench, "train_step_subprocess", fake)
    row = bench.train_step_or_extrapolate("pixel_ddpm_unet", SimpleNamespace(memory_limit_gib=1.0), "cpu", (32, 32, 16))
    assert not row["measured"] and row["failed_at_shape"] == [32, 32, 16] and row["volume_shape"] == [32, 32, 16]
    assert row["step_s"] == pytest.approx(32 * 32 * 16 / 1e3) and row["unit"].endswith("2x32x32x16")
    assert row["peak_memory_MiB"] == pytest.approx(10 + 32 * 32 * 16 / 100) and "extrapolated" in row["memory_kind"]
    assert [r["volume_shape"] for r in row["smaller"]] == [[16, 16, 8], [8, 8, 4]]     # two ran: no eighth
    # a network that runs out at half the size too is measured at a quarter and an eighth
    far = bench.train_step_or_extrapolate("pixel_ddpm_unet", SimpleNamespace(memory_limit_gib=1.0), "cpu", (64, 64, 32))
    assert far["extrapolated_from"] == [[8, 8, 4], [16, 16, 8]] and len(far["smaller"]) == 3
    assert far["peak_memory_MiB"] == pytest.approx(10 + 64 * 64 * 32 / 100)
    fits = bench.train_step_or_extrapolate("pixel_ddpm_unet", SimpleNamespace(memory_limit_gib=1.0), "cpu", (16, 16, 8))
    assert fits["measured"] and fits["step_s"] == pytest.approx(16 * 16 * 8 / 1e3)
    train = [{"component": "sbldm_unet", "step_s": 2.0, "peak_memory_MiB": 50.0}, row]
    bench.add_ratios(train)
    assert train[1]["memory_vs_sbldm"] == pytest.approx(row["peak_memory_MiB"] / 50) and train[0]["time_vs_sbldm"] == 1


@pytest.mark.slow
def test_the_memory_limit_stops_a_step_in_its_own_process(tmp_path):
    """A real subprocess at `smoke`: under a limit far below what the step needs, the
    allocation fails in the child and is reported as out of memory; the parent lives on."""
    from types import SimpleNamespace

    from sbldm.runner import bench

    args = SimpleNamespace(scale="smoke", dtype="fp32", repeats=1, warmup=0, memory_limit_gib=0.001)
    row = bench.train_step_subprocess("pixel_ddpm_unet", args, "cpu")
    assert row["out_of_memory"] and "step_s" not in row
    args.memory_limit_gib = 8.0
    ok = bench.train_step_subprocess("sbldm_unet", args, "cpu", shape=(16, 16, 8))
    assert ok["step_s"] > 0 and ok["volume_shape"] == [16, 16, 8]


def test_sampling_times_from_an_earlier_run_must_match_its_scale_and_device(tmp_path):
    from sbldm.runner.bench import earlier_sampling, markdown

    this = {"scale": "paper", "device": "CPU (x86_64, 2 threads)"}
    rows = [{"sampler": "ddim", "steps": 50, "batch": 1, "dtype": "fp32", "denoise_s_per_volume": 1.0,
             "decode_s_per_volume": 2.0, "total_s_per_volume": 3.0}]
    good = tmp_path / "paper_cpu_fp32.json"
    good.write_text(json.dumps({**this, "sampling": rows}))
    got, note = earlier_sampling(good, this)
    assert got == rows and "paper_cpu_fp32.json" in note
    text = markdown({**this, "volume_shape": [192, 192, 96], "dtype": "fp32", "sampling": got, "sampling_from": note,
                     "training": [], "versions": {}})
    assert "rows of an earlier result kept: paper_cpu_fp32.json" in text
    other = tmp_path / "small.json"
    other.write_text(json.dumps({**this, "scale": "small", "sampling": rows}))
    with pytest.raises(SystemExit, match="scale 'small'"):
        earlier_sampling(other, this)
    (tmp_path / "torn.json").write_text("{")
    with pytest.raises(SystemExit, match="torn.json.*invalid JSON"):
        earlier_sampling(tmp_path / "torn.json", this)
    with pytest.raises(SystemExit, match="missing.json.*cannot read"):
        earlier_sampling(tmp_path / "missing.json", this)


def test_the_3d_ldm_is_timed_beside_sbldm_and_the_table_compares_them():
    """The 3D-LDM's sampling time (its preset's untrained networks): positive denoising and
    decoding times on the latent its autoencoder makes of the preset's volume; the benchmark
    table names each row's generator and states the DDIM-50 comparison."""
    from sbldm.config import resolve
    from sbldm.report.bench_rows import paired_sampling, sampling_rows
    from sbldm.runner.bench import markdown, measure_ldm3d_sampling

    cfg = resolve("smoke")
    row = measure_ldm3d_sampling("smoke", "cpu", "fp32", repeats=1, steps=3, warmup=0)
    f = cfg.ldm3d_ae_downsampling
    assert row["latent_shape"] == [cfg.ldm3d_ae_latent_channels, *(s // f for s in cfg.volume_shape)]
    assert row["generator"] == "3D-LDM" and row["steps"] == 3 and row["volume_shape"] == list(cfg.volume_shape)
    assert row["denoise_s_per_volume"] > 0 and row["decode_s_per_volume"] > 0
    assert row["total_s_per_volume"] == pytest.approx(row["denoise_s_per_volume"] + row["decode_s_per_volume"])
    sbldm = {"sampler": "ddim", "steps": 50, "batch": 1, "dtype": "fp32", "denoise_s_per_volume": 10.0,
             "decode_s_per_volume": 2.0, "total_s_per_volume": 12.0}
    ldm = {**row, "steps": 50, "dtype": "fp32", "total_s_per_volume": 24.0}
    result = {"scale": "smoke", "volume_shape": list(cfg.volume_shape), "device": "CPU (test)", "dtype": "fp32",
              "sampling": [sbldm, ldm], "training": [], "versions": {}}
    assert sampling_rows(result) == [sbldm] and sampling_rows(result, "3D-LDM") == [ldm]
    # compared only at the same steps and dtype
    assert paired_sampling(result) == [(sbldm, ldm)] and paired_sampling(result, "bf16") == []
    assert paired_sampling({**result, "sampling": [sbldm, {**ldm, "steps": 25}]}) == []
    text = markdown(result)
    assert "| SBLDM | ddim | 50 |" in text and "| 3D-LDM | ddim | 50 |" in text
    assert "DDIM-50 per volume in fp32: SBLDM 12 s, the 3D-LDM 24 s (SBLDM 2.00x as fast)" in text


def test_sbldm_sampling_is_timed_per_volume_with_denoising_and_decoding_apart():
    from sbldm.config import resolve
    from sbldm.runner.bench import measure_sampling

    rows = measure_sampling("smoke", "cpu", "fp32", repeats=1, steps=(2, 3), ddpm=False, batch_sizes=(2,))
    assert [(r["sampler"], r["steps"], r["batch"]) for r in rows] == [("ddim", 2, 2), ("ddim", 3, 2)]
    assert all(r["volume_shape"] == list(resolve("smoke").volume_shape) for r in rows)
    assert all(r["denoise_s_per_volume"] > 0 and r["decode_s_per_volume"] > 0 for r in rows)
    assert all(r["total_s_per_volume"] == pytest.approx(r["denoise_s_per_volume"] + r["decode_s_per_volume"])
               for r in rows)


def test_training_steps_from_an_earlier_run_must_match_its_scale_device_dtype_limit_and_batch(tmp_path):
    """--training-from re-times only the sampling (e.g. to add the 3D-LDM's) and keeps the
    hour of training steps, but only from a run measured the same way."""
    from sbldm.runner.bench import earlier_sampling, main, markdown

    this = {"scale": "paper", "device": "CPU (x86_64, 2 threads)", "dtype": "fp32", "memory_limit_gib": 16.0,
            "train_batch": 1}
    rows = [{"component": "sbldm_unet", "step_s": 2.0, "peak_memory_MiB": 100.0}]
    good = tmp_path / "paper.json"
    good.write_text(json.dumps({**this, "training": rows}))
    got, note = earlier_sampling(good, this, "training")
    assert got == rows and "paper.json" in note
    # a result that itself kept another's rows goes on naming where they were measured
    (tmp_path / "kept.json").write_text(json.dumps({**this, "training": rows, "training_from": note}))
    assert earlier_sampling(tmp_path / "kept.json", this, "training")[1] == note
    text = markdown({**this, "volume_shape": [192, 192, 96], "sampling": [], "training": got, "training_from": note,
                     "versions": {}})
    assert "Training step (forward + backward + AdamW; from paper.json" in text
    for key, other in (("dtype", "bf16"), ("memory_limit_gib", None), ("train_batch", 2)):
        (tmp_path / "other.json").write_text(json.dumps({**this, key: other, "training": rows}))
        with pytest.raises(SystemExit, match=f"--training-from .*other.json: measured with {key}"):
            earlier_sampling(tmp_path / "other.json", this, "training")
    (tmp_path / "none.json").write_text(json.dumps({**this, "sampling": [{"x": 1}]}))
    with pytest.raises(SystemExit, match="holds no training times"):
        earlier_sampling(tmp_path / "none.json", this, "training")
    # both parts from earlier runs: only the 3D-LDM is left to time, and without it nothing is measured
    from sbldm.runner.bench import device_name

    smoke = {"scale": "smoke", "device": device_name("cpu"), "dtype": "fp32", "memory_limit_gib": None,
             "train_batch": None}
    sbldm = {"sampler": "ddim", "steps": 50, "batch": 1, "dtype": "fp32", "denoise_s_per_volume": 1.0,
             "decode_s_per_volume": 0.5, "total_s_per_volume": 1.5}
    both = tmp_path / "smoke.json"
    both.write_text(json.dumps({**smoke, "sampling": [sbldm], "training": rows}))
    args = ["--scale", "smoke", "--device", "cpu", "--sampling-from", str(both), "--training-from", str(both),
            "--repeats", "1", "--warmup", "0", "--steps", "2", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="nothing would be measured"):
        main(args + ["--no-ldm3d"])
    assert not (tmp_path / "out").exists()
    assert main(args) == 0
    added = json.loads(next((tmp_path / "out").glob("smoke_*_fp32.json")).read_text())
    assert [{k: r[k] for k in rows[0]} for r in added["training"]] == rows and added["sampling"][0] == sbldm
    assert [(r["generator"], r["steps"], r["dtype"]) for r in added["sampling"][1:]] == [("3D-LDM", 2, "fp32")]
    both.write_text(json.dumps({**smoke, "sampling": added["sampling"], "training": rows}))
    with pytest.raises(SystemExit, match="3D-LDM timed already"):
        main(args)
