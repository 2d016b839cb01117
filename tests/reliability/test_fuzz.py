"""Property-based tests: malformed specs, configs, CSVs and label sets.

The only allowed outcomes are success or a ValueError/TypeError raised by
tfft itself with a message — never a traceback from deep inside TensorFlow,
Keras, pandas or YAML, and never a hang.
"""

import dataclasses
import json
import os
import re
import traceback

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfft
from tfft.adapt.freeze import parse_freeze
from tfft.backbones import parse_spec
from tfft.data import LabelEncoder, load
from tfft.evaluation import report_from_predictions
from tfft.jobs.config import DEPRECATED_SETTINGS, ConfigError
from tfft.jobs.config import load_config_file as _load_config_file
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
SETTINGS = sorted(f.name for f in dataclasses.fields(JobConfig))
# Names that look like settings but are none: non-empty identifiers, so that
# "the message names the key" cannot hold by accident (every message contains "").
unknown_keys = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(
    lambda key: key not in SETTINGS and key not in DEPRECATED_SETTINGS
)
config_keys = st.sampled_from(SETTINGS) | unknown_keys


def _names(key, text):
    """`key` appears in `text` as a whole name, not inside a longer one."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", text) is not None


@FAST
@given(st.dictionaries(config_keys, json_values, max_size=5))
def test_run_configs(data):
    config = _check(JobConfig.from_dict, data)
    if config is not None:
        assert JobConfig.from_dict(config.to_dict()) == config


@FAST
@given(st.dictionaries(st.sampled_from(SETTINGS), json_values, max_size=3),
       st.lists(unknown_keys, min_size=1, max_size=3, unique=True))
def test_unknown_setting_errors_name_each_unknown_key(settings, unknown):
    data = {**settings, **dict.fromkeys(unknown, 1)}
    with pytest.raises(ConfigError) as info:
        JobConfig.from_dict(data)
    # The part before the list of valid settings names exactly the unknown keys.
    named, _, valid = str(info.value).partition("Valid settings:")
    assert valid, str(info.value)
    for key in unknown:
        assert repr(key) in named, (key, str(info.value))
    for key in settings:
        assert repr(key) not in named, (key, str(info.value))


@FAST
@given(st.sampled_from(SETTINGS), json_values)
def test_bad_value_errors_name_their_key(key, value):
    try:
        JobConfig.from_dict({key: value})
    except ConfigError as error:
        # The key is named before the echo of the received value, so a value
        # that happens to contain the key's name cannot satisfy the check.
        head = str(error).split("Received:")[0]
        assert _names(key, head), (key, value, str(error))


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


@pytest.mark.parametrize("name, text, problem", [
    ("run.yaml", "epochs: [1, 2", r"not valid YAML: while parsing a flow sequence"),
    ("run.yaml", "- a\n- b", r"must hold a mapping of settings .* Received: list"),
    ("run.yaml", "", r"must hold a mapping of settings .* Received: an empty file"),
    ("run.yaml", "{}: 1", r"not valid YAML: .*found unhashable key"),
    ("run.yaml", "\t\x00", r"not valid YAML: .*unacceptable character #x0000"),
    ("run.yaml", "a: 1\n---\nb: 2", r"not valid YAML: expected a single document"),
    # Parsers keep the last of two equal keys silently; tfft refuses them.
    ("run.yaml", "epochs: 1\nseed: 3\nepochs: 20",
     r"not valid YAML: .*found duplicate key 'epochs' \(first given on line 1\)"),
    ("run.yml", "distribution:\n  a: 1\n  a: 2", r"found duplicate key 'a'"),
    ("run.json", '{"epochs": 1, "epochs": 20}', r"not valid JSON: duplicate key\(s\) \['epochs'\]"),
    ("run.json", '{"learning_rate": NaN}', r"not valid JSON: NaN is not a JSON value"),
    ("run.json", '{"epochs": 1', r"not valid JSON: Expecting"),
    ("run.yaml", "1: 2\nnull: 3", r"setting names must be strings .* Received: \[1, None\]"),
    ("run.json", "\"epochs\"", r"must hold a mapping of settings .* Received: str"),
    ("run.yaml", b"epochs: \xff", r"not UTF-8 text"),
])
def test_malformed_config_files_are_config_errors(tmp_path, name, text, problem):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as info:
        _load_config_file(str(path))
    assert repr(str(path)) in str(info.value)
    _raised_by_tfft(info.value)


def test_yaml_anchors_and_merge_keys_still_load(tmp_path):
    """Overriding a merged key is YAML's intent, not a duplicate."""
    path = tmp_path / "run.yaml"
    path.write_text("base: &base {epochs: 1, seed: 3}\nrun:\n  <<: *base\n  epochs: 4\n")
    assert _load_config_file(str(path))["run"] == {"epochs": 4, "seed": 3}
