"""``prmagic bench``: it runs end to end on SAM-Tiny and its last line is the report its README table reads."""
import json

from prmagic_core import cli


def test_bench_reports_ratios_fit_and_worker_speedup(capsys):
    code = cli.main(["bench", "--backend", "tiny", "--image-size", "64", "--episodes", "1", "--warmup", "0",
                     "--steps", "1", "--speedup-episodes", "2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ratio_pooled", "ratio_masked_image", "ratio_crop_pool", "ratio_eta_sweep4", "persamf_fit_s"):
        assert report[key] > 0, key
    assert report["encoder_passes"]["baseline"] == 2  # support and query, once each
    assert report["encoder_passes"]["prmagic_pooled"] == 2  # the pooled selector re-encodes nothing
    assert report["encoder_passes"]["prmagic_masked-image"] > 2
    steps = report["persamf_fit_steps"]
    assert steps["persamf_fit_max_weight_difference"] <= 1e-5  # the fast fit is the plain loop's result
    assert report["workers_speedup"] > 0
    assert set(report["peak_rss_mb"]) == set(report["seconds_per_episode"])
    assert report["settings"]["image_size"] == 64
