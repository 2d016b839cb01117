"""`tfft export`: a .keras model -> versioned SavedModel, from the command line."""

import argparse
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfft.export import cli
from tfft.export.saved_model import read_metadata


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="tfft")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def text_preset(make_text_model, tmp_path_factory):
    """A tiny text model saved as .keras, and its backbone + preprocessor as a preset."""
    model = make_text_model()
    root = tmp_path_factory.mktemp("cli")
    preset = str(root / "tiny_bert_preset")
    model.backbone.save_to_preset(preset)
    model.preprocessor.save_to_preset(preset)
    path = str(root / "model.keras")
    model.save(path)
    return model, path, preset


def test_text_model_with_preset_backbone(text_preset, tmp_path, capsys):
    model, path, preset = text_preset
    out_dir = str(tmp_path / "saved_models" / "news")
    code, out, err = run(["--model", path, "--out", out_dir, "--backbone",
                          f"keras_hub:{preset}", "--sequence-length", "16",
                          "--class-names", "business,sport,tech", "--no-verify"], capsys)
    assert code == 0, err
    export_path = json.loads(out.strip().splitlines()[-1])["export_path"]
    assert export_path == os.path.join(out_dir, "1")
    texts = ["the team win", "bank profit"]
    got = tf.saved_model.load(export_path).signatures["serving_default"](tf.constant(texts))
    pre = model.preprocessor
    want = np.asarray(model(pre(tf.constant(texts)), training=False))
    np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-5)
    meta = read_metadata(export_path)
    assert meta["class_names"] == ["business", "sport", "tech"]
    assert meta["backbone_spec"] == f"keras_hub:{preset}"

    # Class names from the latest export's metadata; an explicit version.
    code, out, err = run(["--model", path, "--out", out_dir, "--backbone",
                          f"keras_hub:{preset}", "--version", "5", "--no-verify"], capsys)
    assert code == 0, err
    assert read_metadata(os.path.join(out_dir, "5"))["class_names"] == [
        "business", "sport", "tech"]
    # The same version again needs --overwrite.
    code, _, err = run(["--model", path, "--out", out_dir, "--backbone",
                        f"keras_hub:{preset}", "--version", "5", "--no-verify"], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, _, err = run(["--model", path, "--out", out_dir, "--backbone", f"keras_hub:{preset}",
                        "--version", "5", "--overwrite", "--no-verify",
                        "--class-names", "b,s,t"], capsys)
    assert code == 0, err
    assert read_metadata(os.path.join(out_dir, "5"))["class_names"] == ["b", "s", "t"]


def test_image_model_class_names_from_sidecar(image_model, tmp_path, capsys):
    path = str(tmp_path / "animals.keras")
    image_model.save(path)
    with open(str(tmp_path / "animals.json"), "w") as f:
        json.dump({"class_names": ["cat", "dog", "fox"]}, f)
    out_dir = str(tmp_path / "out")
    code, out, err = run(["--model", path, "--out", out_dir,
                          "--backbone", "keras_app:MobileNetV2", "--no-verify"], capsys)
    assert code == 0, err
    export_path = json.loads(out.strip().splitlines()[-1])["export_path"]
    loaded = tf.saved_model.load(export_path)
    assert sorted(loaded.signatures) == ["serving_arrays", "serving_default"]
    raw = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    got = loaded.signatures["serving_arrays"](tf.constant(raw))["probabilities"].numpy()
    want = np.asarray(image_model(np.asarray(image_model.preprocessor(raw)), training=False))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert read_metadata(export_path)["class_names"] == ["cat", "dog", "fox"]


@pytest.mark.parametrize("argv,message", [
    (["--model", "missing.keras"], "must be an existing .keras file"),
    (["--model", "{model}", "--version", "0"], "--version must be a positive integer"),
    (["--model", "{model}"], "No class names"),
    (["--model", "{model}", "--class-names", "a,b", "--backbone", "keras_hub:{preset}"],
     "Received 2 names"),
])
def test_usage_errors(text_preset, tmp_path, capsys, argv, message):
    _, path, preset = text_preset
    argv = [a.format(model=path, preset=preset) for a in argv]
    code, _, err = run([*argv, "--out", str(tmp_path / "o"), "--no-verify"], capsys)
    assert code == 2
    assert message in err
    assert not os.path.exists(tmp_path / "o" / "1")


@pytest.mark.slow
def test_minilm_preprocessor_rebuilt_from_spec():
    pre, modality = cli.preprocessor_for_spec("minilm", sequence_length=24)
    assert modality == "text"
    tokens = pre(tf.constant(["Shares rose after the profit report"]))
    assert tokens["token_ids"].shape == (1, 24)
    assert int(tokens["token_ids"][0, 0]) == 101  # [CLS] in the uncased BERT vocabulary
    assert int(tokens["padding_mask"].numpy().sum()) < 24


def test_image_preset_folder_preprocessor_rebuilt_from_spec(tmp_path):
    """`tfft export --backbone keras_hub:<image folder>` gets the folder's image
    normalisation and size, not a text tokenizer (issue 25, item 7)."""
    import keras_hub

    from tfft.layers import ImagePreprocessor

    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=4, num_layers=1, hidden_dim=8, num_heads=2, intermediate_dim=16,
        image_shape=(28, 28, 3), position_embedding_shape=(64, 64, 3),
    )
    folder = str(tmp_path / "tiny_dinov2")
    backbone.save_to_preset(folder)
    keras_hub.layers.DINOV2ImageConverter(image_size=(28, 28), scale=1 / 127.5,
                                          offset=-1.0).save_to_preset(folder)
    pre, modality = cli.preprocessor_for_spec(f"keras_hub:{folder}")
    assert modality == "image" and isinstance(pre, ImagePreprocessor)
    white = np.asarray(pre(np.full((1, 50, 40, 3), 255, "uint8")))
    assert white.shape == (1, 28, 28, 3)   # the folder's size
    np.testing.assert_allclose(white, 1.0, rtol=1e-5)   # its [-1, 1] scaling
    pre, _ = cli.preprocessor_for_spec(f"keras_hub:{folder}", image_size=16)
    assert np.asarray(pre(np.zeros((1, 50, 40, 3), "uint8"))).shape == (1, 16, 16, 3)
