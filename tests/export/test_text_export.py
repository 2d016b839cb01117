"""Text SavedModel export: raw strings in, probabilities and class names out."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.export import export_saved_model, saved_model
from tfft.export import saved_model as tfft_export

CLASSES = ["business", "sport", "tech"]


def expected_probabilities(model, texts):
    pre = model.preprocessor
    return np.asarray(model(pre(tf.constant(texts)), training=False))


@pytest.fixture(scope="module")
def exported(make_text_model, tmp_path_factory):
    """One verified export (fresh-process check inside), shared by the tests below."""
    model = make_text_model()
    directory = tmp_path_factory.mktemp("exports") / "bbc"
    report = {"accuracy": 0.5, "macro_f1": 0.4}
    path = export_saved_model(model, str(directory), class_names=CLASSES,
                       sample_inputs=["the bank", "film award"], evaluation=report,
                       metadata={"dataset": "tiny"})
    return model, path


def test_fresh_process_outputs_equal_in_memory_model(exported, texts, monkeypatch):
    model, path = exported
    # Like a serving process, the verifying one runs the export without Keras.
    monkeypatch.setattr(tfft_export, "_VERIFY_SCRIPT", tfft_export._VERIFY_SCRIPT + (
        "\nassert 'keras' not in sys.modules, [m for m in sys.modules if 'keras' in m]\n"))
    got = tfft_export.load_serving_outputs_in_fresh_process(path, texts)
    want = expected_probabilities(model, texts)
    assert got["probabilities"].shape == (len(texts), 3)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    np.testing.assert_array_equal(got["class_ids"], want.argmax(-1))
    assert list(got["class_names"]) == [CLASSES[i] for i in want.argmax(-1)]
    # The inputs were chosen so the model does not give one class to everything.
    assert len(set(got["class_ids"].tolist())) > 1


def test_verifying_process_imports_tensorflow_text_when_its_op_libraries_are_not_found(
        exported, texts, monkeypatch):
    model, path = exported
    script = tfft_export._VERIFY_SCRIPT
    assert '"_*.so"' in script
    monkeypatch.setattr(tfft_export, "_VERIFY_SCRIPT", script.replace('"_*.so"', '"_none*.so"'))
    got = tfft_export.load_serving_outputs_in_fresh_process(path, texts)
    np.testing.assert_allclose(got["probabilities"], expected_probabilities(model, texts),
                               atol=1e-5)


def test_first_export_is_version_1_with_metadata(exported):
    model, path = exported
    assert os.path.basename(path) == "1"
    meta = tfft_export.read_metadata(path)
    assert meta["class_names"] == CLASSES
    assert meta["task"] == "multiclass" and meta["modality"] == "text"
    assert meta["evaluation"] == {"accuracy": 0.5, "macro_f1": 0.4}
    assert meta["dataset"] == "tiny"
    assert meta["backbone"]["name"] == model.backbone_info.name
    assert meta["backbone"]["output_key"] == "sequence_output"
    assert meta["preprocessing"]["sequence_length"] == 16
    assert meta["preprocessing"]["class"].endswith("BertTextClassifierPreprocessor")
    assert meta["tensorflow_version"] == tf.__version__
    assert meta["tfft_version"] == tfft.__version__
    assert meta["signature"]["outputs"] == ["probabilities", "class_ids", "class_names"]
    # No staging directory is left beside the version.
    assert os.listdir(os.path.dirname(path)) == ["1"]


def test_saved_model_cli_lists_documented_names(exported):
    _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run(
        [cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def",
         "serving_default"], capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    assert "inputs['inputs']" in out and "DT_STRING" in out
    for name in ("probabilities", "class_ids", "class_names"):
        assert f"outputs['{name}']" in out
    assert "shape: (-1, 3)" in out  # probabilities: one column per class


def test_wrong_input_dtype_is_refused_at_serving_time(exported):
    _, path = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError),
                       match="string"):
        serve(tf.constant([1, 2, 3]))


def test_versions_count_up_and_explicit_version(make_text_model, tmp_path):
    model = make_text_model()
    directory = str(tmp_path / "m")
    assert tfft_export.next_version(directory) == 1
    explicit = export_saved_model(model, directory, class_names=CLASSES, version=7, verify=False)
    assert os.path.basename(explicit) == "7"
    following = export_saved_model(model, directory, class_names=CLASSES, verify=False)
    assert os.path.basename(following) == "8"
    os.makedirs(os.path.join(directory, "notes"))  # non-numeric entries are ignored
    assert tfft_export.list_versions(directory) == [7, 8]
    assert tfft_export.next_version(directory) == 9


@pytest.mark.parametrize("task,num_classes,names,outputs", [
    ("binary", 1, ["neg", "pos"], ["probabilities", "class_ids", "class_names"]),
    ("multilabel", 4, None, ["probabilities", "predictions"]),
    ("regression", 2, None, ["value"]),
])
def test_task_outputs(make_text_model, tmp_path, texts, task, num_classes, names, outputs):
    model = make_text_model(task=task, num_classes=num_classes)
    path = export_saved_model(model, str(tmp_path / task), class_names=names, verify=False)
    got = tf.saved_model.load(path).signatures["serving_default"](tf.constant(texts))
    assert sorted(got) == sorted(outputs)
    raw = expected_probabilities(model, texts)
    assert tfft_export.read_metadata(path)["task"] == task  # inferred from the head
    if task == "binary":
        want = np.concatenate([1 - raw, raw], axis=-1)
        np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-6)
        labels = [n.decode() for n in got["class_names"].numpy()]
        assert labels == [names[int(p > 0.5)] for p in raw[:, 0]]
    elif task == "multilabel":
        np.testing.assert_allclose(got["probabilities"].numpy(), raw, atol=1e-6)
        np.testing.assert_array_equal(got["predictions"].numpy(), (raw >= 0.5).astype("int32"))
    else:
        assert got["value"].shape == (len(texts), 2)
        np.testing.assert_allclose(got["value"].numpy(), raw, atol=1e-6)


def test_classification_without_class_names_is_refused(make_text_model, tmp_path):
    model = make_text_model()
    with pytest.raises(ValueError, match="needs class_names"):
        export_saved_model(model, str(tmp_path / "m"), verify=False)
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize("task,names,error,match", [
    ("multiclass", ["a", "b"], ValueError, "gives 3 classes. Received 2 names"),
    ("multiclass", ["a", "b", "c", "d"], ValueError, "Received 4 names"),
    ("multiclass", "a,b,c", TypeError, "list of strings"),
    ("multiclass", ["a", "a", "b"], ValueError, "unique"),
    ("ranking", ["a", "b", "c"], ValueError, "Unknown export task"),
])
def test_bad_class_names_or_task(make_text_model, tmp_path, task, names, error, match):
    model = make_text_model()
    with pytest.raises(error, match=match):
        export_saved_model(model, str(tmp_path / "m"), class_names=names, task=task, verify=False)


def test_binary_needs_two_class_names(make_text_model, tmp_path):
    model = make_text_model(task="binary", num_classes=1)
    with pytest.raises(ValueError, match=r"gives 2 classes. Received 1 names"):
        export_saved_model(model, str(tmp_path / "m"), class_names=["pos"], verify=False)


def test_bad_version_and_modality(make_text_model, tmp_path):
    model = make_text_model()
    for version in (0, -1, "2", True):
        with pytest.raises(ValueError, match="version must be a positive int"):
            export_saved_model(model, str(tmp_path / "m"), class_names=CLASSES, version=version,
                        verify=False)
    with pytest.raises(ValueError, match="Unknown modality"):
        export_saved_model(model, str(tmp_path / "m"), class_names=CLASSES, modality="audio",
                    verify=False)


def test_metadata_is_json_and_lists_signatures(make_text_model, tmp_path):
    model = make_text_model()
    path = export_saved_model(model, str(tmp_path / "m"), class_names=CLASSES, verify=False,
                       metadata={"seed": np.int64(3)})
    with open(os.path.join(path, saved_model.METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["seed"] == 3
    assert meta["signatures"] == {
        "serving_default": {"input": "inputs", "dtype": "string", "shape": [None]}}
    assert "evaluation" not in meta


class _Width(keras.layers.Layer):
    """Scores `[w / 16, 1 - w / 16]` for a batch padded to width `w`: shows what the model got."""

    def call(self, token_ids):
        width = keras.ops.cast(keras.ops.shape(token_ids)[1], "float32") / 16.0
        ones = keras.ops.ones_like(keras.ops.cast(token_ids[:, :1], "float32"))
        return keras.ops.concatenate([ones * width, ones * (1.0 - width)], axis=-1)


def _width_probe(sequence_length):
    inputs = {name: keras.Input((sequence_length,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    return keras.Model(inputs, _Width()(inputs["token_ids"]))


@pytest.mark.parametrize("sequence_length, served", [(None, [4, 7]), (16, [16, 16])])
def test_text_signature_runs_each_request_at_its_own_length(tiny_text_preprocessor,
                                                            sequence_length, served):
    # A model that takes any length gets each request cut to its longest text
    # ("the bank": [CLS] the bank [SEP]); one with a fixed input length keeps
    # the preprocessor's 16.
    fns = saved_model._serving_fns(_width_probe(sequence_length), tiny_text_preprocessor,
                                   "text", "multiclass", ["a", "b"])
    serve, signature = fns["serving_default"]
    graph_fn = tf.function(serve, input_signature=signature)
    widths = [
        round(float(graph_fn(tf.constant(batch))["probabilities"][0, 0]) * 16)
        for batch in (["the bank"], ["the bank", "the team win the match"])
    ]
    assert widths == served


def test_trim_to_longest_keeps_every_unpadded_token(tiny_text_preprocessor, texts):
    features = tiny_text_preprocessor(tf.constant(texts))
    trimmed = saved_model.trim_to_longest(features)
    longest = int(tf.reduce_max(tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), 1)))
    for key, value in trimmed.items():
        assert value.shape == (len(texts), longest)
        np.testing.assert_array_equal(value, features[key][:, :longest])
        # Everything cut away was padding.
        assert not np.any(np.asarray(features["padding_mask"])[:, longest:])
    empty = saved_model.trim_to_longest(tiny_text_preprocessor(tf.constant([""])))
    assert empty["token_ids"].shape[1] >= 1
    # Rounded up to a multiple (for XLA), never past the padded width (16 here).
    rounded = saved_model.trim_to_longest(features, multiple=8)
    assert rounded["token_ids"].shape[1] == min(16, -(-longest // 8) * 8)
    np.testing.assert_array_equal(rounded["token_ids"],
                                  features["token_ids"][:, :rounded["token_ids"].shape[1]])
    assert saved_model.trim_to_longest(features, multiple=64)["token_ids"].shape[1] == 16


def _xla_functions(signature):
    """Names of the functions in a loaded signature's graph marked for XLA."""
    graph = signature.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    marked = [f.signature.name for f in graph.library.function
              if f.attr.get("_XlaMustCompile") is not None and f.attr["_XlaMustCompile"].b]
    marked += [n.name for n in nodes
               if n.attr.get("_XlaMustCompile") is not None and n.attr["_XlaMustCompile"].b]
    return marked


def test_jit_compiled_export_serves_the_same_outputs(make_text_model, tmp_path, texts):
    model = make_text_model()
    # Verified against the in-memory model in a fresh process inside.
    path = export_saved_model(model, str(tmp_path / "xla"), class_names=CLASSES,
                              sample_inputs=["the bank", "film award"], jit_compile=True)
    got = tfft_export.load_serving_outputs_in_fresh_process(path, texts)
    want = expected_probabilities(model, texts)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    assert list(got["class_names"]) == [CLASSES[i] for i in want.argmax(-1)]
    assert tfft_export.read_metadata(path)["jit_compile"] is True
    assert _xla_functions(tf.saved_model.load(path).signatures["serving_default"])
    plain = export_saved_model(model, str(tmp_path / "plain"), class_names=CLASSES,
                               verify=False)
    assert tfft_export.read_metadata(plain)["jit_compile"] is False
    assert not _xla_functions(tf.saved_model.load(plain).signatures["serving_default"])
