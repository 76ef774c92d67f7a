"""The command line: listings, help, and bad input stopped with a clear message before
anything is written; the ``score`` verb's argument checks and the ``report`` verb."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from report_helpers import results_rows
from shard_helpers import feature_pool, write_shards

from daal_ray.cli import build_parser, main
from daal_ray.cli.run import configs_from_args
from daal_ray.results import upsert_rows


def _run(tmp_path, *extra):
    run_dir = tmp_path / "runs"
    return main(["run", "--run-dir", str(run_dir), *extra]), run_dir


@pytest.mark.parametrize("verb,expected", [("strategies", ["random", "entropy"]), ("datasets", ["digits", "cifar10", "cifar100", "imagefolder"]),
                                           ("models", ["small_cnn", "wrn28_2"])])
def test_listings(verb, expected, capsys):
    assert main([verb]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert any(line.startswith(name + " ") for line in out.splitlines()), (name, out)


def test_help_explains_each_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("run", "strategies", "datasets", "models"):
        assert verb in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset", "--data-root", "--strategy", "--seeds", "--epochs", "--num-workers", "--use-gpu",
                 "--run-dir", "--model", "--budget", "--initial-fraction", "--config"):
        assert flag in out


def _imagefolder(root, bad=False):
    for split in ("train", "test"):
        for c, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (6, 6), color).save(d / f"{i}.png")
    if bad:
        (root / "train" / "a" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.mark.parametrize("case,args,message", [
    ("dataset", ["--dataset", "mnist"], "unknown dataset 'mnist'; registered datasets: cifar10, cifar100,"),
    ("strategy", ["--strategy", "oracle"], "unknown strategy 'oracle'; registered strategies:"),
    ("budget", ["--budget", "5000"], "budget of 5000 per cycle is larger than the unlabeled pool"),
    ("root", ["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], "cifar10 not found: expected the official layout at /nonexistent/cifar/cifar-10-batches-py"),
    ("noroot", ["--dataset", "imagefolder"], "dataset imagefolder needs --data-root"),
    ("fraction0", ["--initial-fraction", "0"], "ExperimentConfig.initial_fraction must be in (0, 1), got 0.0"),
    ("fraction1", ["--final-fraction", "1.5"], "ExperimentConfig.final_fraction must be in (0, 1), got 1.5"),
    ("model", ["--model", "resnet9000"], "unknown model 'resnet9000'; registered models:"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, capsys, case, args, message):
    code, run_dir = _run(tmp_path, *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists(), "bad input must not leave a half-written run directory"


def test_unreadable_image_is_named(tmp_path, capsys):
    root = _imagefolder(tmp_path / "imgs", bad=True)
    code, run_dir = _run(tmp_path, "--dataset", "imagefolder", "--data-root", str(root))
    assert code == 2
    err = capsys.readouterr().err
    assert "unreadable image" in err and str(root / "train" / "a" / "broken.png") in err
    assert not run_dir.exists()


@pytest.mark.parametrize("content,message", [
    ({"seed": 1, "learning_rate": 0.1}, "unknown key 'learning_rate' in ExperimentConfig; allowed: name, seed, data"),
    ({"train": {"epochz": 3}}, "unknown key 'epochz' in ExperimentConfig.train; allowed: model, epochs"),
    ({"train": {"epochs": "3"}}, "ExperimentConfig.train.epochs must be int, got str ('3')"),
    ({"budget": 1.5}, "ExperimentConfig.budget must be int, got float (1.5)"),
])
def test_bad_config_file_is_named(tmp_path, capsys, content, message):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(content))
    code, run_dir = _run(tmp_path, "--config", str(path))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_config_file_and_flags_combine(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"train": {"epochs": 7, "lr": 0.01}, "final_fraction": 0.3,
                                "acquisition": {"strategy": "entropy"}}))
    args = build_parser().parse_args(["run", "--config", str(path), "--epochs", "4", "--seeds", "2"])
    configs = configs_from_args(args)
    assert [c.name for c in configs] == ["digits-entropy-seed0", "digits-entropy-seed1"]
    assert all(c.train.epochs == 4 and c.train.lr == 0.01 and c.final_fraction == 0.3 for c in configs)
    assert configs[0].train.model == "small_cnn"


# --------------------------------------------------------------------------- score
def test_cli_score_refuses_bad_arguments(tmp_path):
    pool = feature_pool(50, 4, 5, seed=6)
    write_shards(pool, tmp_path / "pool", 1, probs=False)
    base = ["score", "--features", str(tmp_path / "pool"), "--k", "3"]
    assert main(base + ["--out", str(tmp_path / "x.txt")]) == 2
    assert main(base + ["--out", str(tmp_path / "x.csv"), "--params", "[1]"]) == 2
    assert main(base + ["--out", str(tmp_path / "x.csv"), "--labeled-ids", str(tmp_path / "none.npy")]) == 2
    (tmp_path / "ids.txt").write_text("1\nnot-an-id\n")
    assert main(base + ["--out", str(tmp_path / "x.csv"), "--labeled-ids", str(tmp_path / "ids.txt")]) == 2


# --------------------------------------------------------------------------- report
def test_cli_report_verb(tmp_path, capsys):
    run = tmp_path / "run"
    upsert_rows(run / "results.parquet", results_rows())  # a plain `daal-ray run` directory: only the combined file
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== digits, budget 50 per cycle, 2 seed(s) ==")
    assert (tmp_path / "out" / "ablation_bars.png").exists() and (tmp_path / "out" / "report.txt").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
