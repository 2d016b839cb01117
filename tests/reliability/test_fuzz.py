"""Property-based tests: malformed specs, configs, CSVs and label sets.

The only allowed outcomes are success or a ValueError/TypeError raised by
tfft itself with a message — never a traceback from deep inside TensorFlow,
Keras, pandas or YAML, and never a hang.
"""

import json
import os
import traceback

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfft
from tfft.adapt.freeze import parse_freeze
from tfft.backbones import parse_spec
from tfft.cli.main import _load_config_file
from tfft.data import LabelEncoder, load
from tfft.evaluation import report_from_predictions
from tfft.jobs.finetune import JobConfig
from tfft.models.builder import check_labels

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
TFFT_DIR = os.path.dirname(tfft.__file__)


def _raised_by_tfft(error):
    """The error is a tfft error: clear message, raised from tfft's own code."""
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    assert str(error).strip(), "an error without a message"
    frames = traceback.extract_tb(error.__traceback__)
    assert frames and frames[-1].filename.startswith(TFFT_DIR), (
        f"raised outside tfft: {frames[-1].filename}:{frames[-1].lineno}: {error}"
    )


def _check(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as error:  # every failure must be a tfft error
        _raised_by_tfft(error)
        return None


@FAST
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.text())))
def test_backbone_specs(spec):
    _check(parse_spec, spec)


@FAST
@given(st.one_of(
    st.text(max_size=30),
    st.builds(lambda n, a: f"{n}:{a}",
              st.sampled_from(["top_k", "regex", "full", "feature_extraction", "lora", "gradual"]),
              st.text(max_size=10)),
    st.integers(),
))
def test_freeze_policy_strings(policy):
    _check(parse_freeze, policy)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
config_keys = st.sampled_from(
    [f.name for f in __import__("dataclasses").fields(JobConfig)] + ["epoch", "lr", ""]
)


@FAST
@given(st.dictionaries(config_keys, json_values, max_size=5))
def test_run_configs(data):
    config = _check(JobConfig.from_dict, data)
    if config is not None:
        assert JobConfig.from_dict(config.to_dict()) == config


@FAST
@given(st.dictionaries(config_keys, json_values, min_size=1, max_size=3))
def test_config_errors_name_the_key(data):
    try:
        JobConfig.from_dict(data)
    except ValueError as error:
        message = str(error)
        assert any(str(k) in message for k in data) or "backbone" in message, message


@FAST
@given(st.text(max_size=200), st.sampled_from([".yaml", ".json"]))
def test_config_files(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("cfg") / f"run{suffix}"
    path.write_text(text)
    loaded = _check(_load_config_file, str(path))
    if loaded is not None:
        assert isinstance(loaded, dict)
        _check(JobConfig.from_dict, loaded)


csv_cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)


@FAST
@given(st.lists(st.lists(csv_cells, min_size=0, max_size=3), max_size=6),
       st.booleans())
def test_csv_sources(tmp_path_factory, rows, with_header):
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    lines = (["text,label"] if with_header else []) + [",".join(r) for r in rows]
    path.write_text("\n".join(lines))
    data = _check(load, str(path), text_column="text", label_column="label")
    if data is not None:
        assert len(data.x) == len(data.y)
        assert data.y.min() >= 0 and data.y.max() < len(data.class_names)


@FAST
@given(st.lists(st.one_of(st.integers(-3, 6), st.text(max_size=3), st.none()), max_size=12),
       st.integers(-1, 5))
def test_label_sets(labels, num_classes):
    _check(check_labels, labels, "multiclass", num_classes)
    encoder = _check(LabelEncoder, [str(c) for c in range(max(num_classes, 0))])
    if encoder is not None:
        _check(encoder.encode, labels)


@FAST
@given(st.integers(0, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_reports_on_random_predictions(n, k, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k + 1, n)
    probs = rng.dirichlet(np.ones(k), n) if n else np.zeros((0, k))
    report = _check(report_from_predictions, y, probs, class_names=[str(i) for i in range(k)])
    if report is not None:
        assert 0.0 <= report["accuracy"] <= 1.0
        json.dumps(report.to_dict())


@pytest.mark.parametrize("bad", ["epochs: [1, 2", "- a\n- b", "{}: 1", "\t\x00"])
def test_malformed_yaml_is_a_config_error(tmp_path, bad):
    path = tmp_path / "run.yaml"
    path.write_text(bad)
    _check(_load_config_file, str(path))
