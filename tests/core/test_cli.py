import json
import os

import pytest

from tfft.cli.main import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "does-not-exist"], "Unknown or malformed backbone spec"),
        (["--dataset", "nope"], "unknown dataset"),
        (["--epochs", "-1"], "expected a non-negative integer"),
        (["--head-epochs", "0"], "expected a positive integer"),
        (["--batch-size", "x"], "expected a positive integer"),
    ],
)
def test_finetune_bad_input_exits_2_and_writes_nothing(args, message, tmp_path, capsys):
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    argv = ["finetune", *args, "--run-dir", str(run_dir), "--export-dir", str(export_dir)]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not run_dir.exists() and not export_dir.exists()


def test_unwritable_export_dir_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["finetune", "--export-dir", str(blocker / "m"), "--run-dir",
                 str(tmp_path / "run")])
    assert code == 2
    assert "export directory" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_file_with_unknown_key_exits_2(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\nbatchsize: 8\n")
    assert main(["finetune", "--config", str(config)]) == 2
    assert "batchsize" in capsys.readouterr().err


def _help(argv, capsys):
    """What `tfft <argv>` prints; in this process (`python -m tfft.cli.main` is run by
    tests/reliability/test_resume.py, the installed `tfft` by tests/packaging)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_help_documents_the_options(capsys):
    out = _help(["finetune", "--help"], capsys)
    for flag in ("--backbone", "--dataset", "--epochs", "--sequence-length", "--batch-size",
                 "--export-dir", "--run-dir", "--method", "--distribution"):
        assert flag in out
    top = _help(["--help"], capsys)
    assert "finetune" in top and "predict" in top


@pytest.mark.slow
def test_predict_classifies_raw_text_with_the_export(finetune_run, capsys):
    path = finetune_run["export_path"]
    code = main(["predict", "--model", path, "Shares fell as the bank reported lower profit.",
                 "The striker scored twice in the cup final."])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["class_names"] for r in rows] == ["business", "sports"]
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)


def test_predict_rejects_a_non_savedmodel(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), "text"]) == 2
    assert "saved_model.pb" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_evaluate_scores_the_real_export_on_its_own_test_split(finetune_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", finetune_run["export_path"], "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "report.json") as f:
        report = json.load(f)
    metrics = report["metrics"]
    # The export's metadata names the dataset and split, so the CLI scores exactly the
    # test articles the main job held out, through the SavedModel on raw strings.
    assert metrics["num_examples"] == finetune_run["test_report"]["metrics"]["num_examples"]
    assert metrics["macro_f1"] == pytest.approx(finetune_run["test"]["macro_f1"], abs=1e-9)
    for png in ("confusion_matrix.png", "per_class_f1.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_method_flag_is_validated_and_documented(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["finetune", "--method", "lora_magic", "--run-dir", str(run_dir)])
    assert stop.value.code == 2
    assert "--method" in capsys.readouterr().err and not run_dir.exists()


def test_strategy_flag_is_a_deprecated_alias_of_method(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # A bad dataset stops the run before any work, after the flags are read.
    code = main(["finetune", "--strategy", "prompt", "--dataset", "nope", "--run-dir",
                 str(run_dir)])
    assert code == 2
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "deprecated" in line]
    assert notes == ["tfft finetune: note: --strategy is deprecated; use --method prompt "
                     "(tf.distribute is --distribution)."]
    assert "unknown dataset" in err and not run_dir.exists()
    code = main(["finetune", "--strategy", "prompt", "--method", "soft_prompt",
                 "--run-dir", str(run_dir)])
    assert code == 2
    assert "they disagree" in capsys.readouterr().err


def test_config_file_strategy_key_gets_a_one_line_note(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("strategy: prompt\ndataset: nope\n")
    assert main(["finetune", "--config", str(config), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "deprecated" in line] == [
        "tfft finetune: note: The setting 'strategy' is deprecated: use 'method' (method: "
        "'prompt'); 'strategy' now means tf.distribute only (the setting 'distribution')."]
