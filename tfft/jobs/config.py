"""The main job's settings: `JobConfig`, its checks, and the renamed settings it still takes."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from typing import Any

import yaml

from tfft.backbones import parse_spec
from tfft.data import TEXT_DATASETS
from tfft.data.sources import ON_ERROR
from tfft.data.user_data import DATA_TASKS
from tfft.distribute import STRATEGY_NAMES

METHODS = ("fine_tune", "prompt", "soft_prompt", "few_shot")
DEFAULT_DATASET = "bbc_news"
# `backbone="auto"` follows the data's modality.
DEFAULT_BACKBONES = {"text": "keras_hub:all_minilm_l6_v2", "image": "offline:efficientnet_lite0"}
# `export_dir="auto"`: saved_models/<data name>_<backbone name>.
AUTO = "auto"
# Old setting name -> new one. The old names keep working, with a DeprecationWarning.
DEPRECATED_SETTINGS = {"strategy": "method"}


# LoRA fine-tuning of a causal LM on prompt/completion data (`tfft.jobs.causal_lm`).
CAUSAL_LM_TASK = "causal_lm"
# Dense vision tasks: their own job (`tfft.jobs.dense_vision`).
DETECTION_TASK = "object_detection"
SEGMENTATION_TASK = "semantic_segmentation"
DENSE_VISION_TASKS = (DETECTION_TASK, SEGMENTATION_TASK)


class ConfigError(ValueError):
    """A run setting is invalid; the message names the setting and valid values."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Settings of the main job (also the CLI's flags and config files' keys).

    Args:
        backbone: str. Backbone spec, or `"auto"` (the default): the offline
            all-MiniLM-L6-v2 for texts, the offline EfficientNet-Lite0 for
            images (`offline:efficientnet_lite0`).
        dataset: str. A bundled dataset in `tfft.data.TEXT_DATASETS`; None
            (the default) means `"bbc_news"` unless `data` is given.
        data: str. The user's data: a CSV/TSV/JSONL file, a folder with one
            subfolder per class (texts or images), or a TFDS name. Replaces
            `dataset`. Without `val_data`/`test_data` (or a TFDS source's
            own splits) it is split like `dataset` (`val_fraction`,
            `test_fraction`; stratified for classes).
        val_data: str. A validation file or folder of the same form.
        test_data: str. A test file or folder of the same form.
        text_column: str. The input column of a file (texts, or image paths).
        label_column: str. The label (or target) column of a file.
        task: str. `"multiclass"`, `"binary"`, `"multilabel"` (a file whose
            label cells list labels split by `label_separator`) or
            `"regression"` (numeric targets; reports MAE, RMSE and R^2).
        label_separator: str. Separator of the labels in a multilabel cell
            (None: `"|"`).
        class_names: list of str. The classes in id order; a label outside
            them is an error. Defaults to the labels found.
        on_error: str. `"raise"` (default): a bad record (an unreadable image,
            a missing label) stops the job naming it; `"skip"`: bad records
            are counted, reported and left out.
        image_size: list of two ints `[height, width]`. Resize images to
            this size when loading (needed when they differ in size).
        encoding: str. Text encoding of the data files. Defaults to utf-8.
        threshold: float. Decision threshold of a multilabel job: a label
            is predicted when its probability is at least this (report and
            export alike). Defaults to 0.5.
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch (per replica).
        head_epochs: int. Epochs of head training on the frozen backbone.
        epochs: int. Epochs of fine-tuning with the top blocks unfrozen
            (0 skips that stage).
        unfreeze_top: int. Transformer blocks unfrozen in the second stage.
        head_learning_rate: float. Adam learning rate for the head stage.
        learning_rate: float. Peak AdamW learning rate for fine-tuning
            (linear warmup over 10% of the stage's steps, then linear decay).
        val_fraction: float. Validation share of the stratified split.
        test_fraction: float. Test share of the stratified split.
        seed: int. Seed for the split, initialisation and shuffling.
        max_examples: int. Use a stratified subset of this many examples
            (None: all).
        export_dir: str. Model directory; the version goes below it (None
            skips the export; `"auto"`, the default:
            `saved_models/<data name>_<backbone name>`).
        export_jit_compile: bool. Compile the export's model part with XLA
            (`export_saved_model(jit_compile=True)`): faster single requests
            on CPU, about 1 s of compilation per new request shape.
        run_dir: str. Where the report, logs and checkpoints go. Defaults to
            `runs/<date>-<time>-<microseconds>`, created exclusively (unique).
        feature_cache: bool. Train the head on cached backbone features.
        method: str. How to adapt the backbone: `"fine_tune"` (head on the
            frozen backbone, then the top blocks), `"prompt"` (zero-shot:
            label prompts embedded by the backbone become the head; no
            parameter updates) or `"soft_prompt"` (learnable prompt vectors
            before a frozen backbone, trained for `epochs`) or `"few_shot"`
            (`shots` training examples per class: contrastive fine-tuning of
            the encoder on pairs of them for `epochs`, then the head, starting
            from the `prompt_template` zero-shot head; see
            `tfft.few_shot_fit`). The config key `strategy` is a deprecated
            alias.
        distribution: str. A `tfft.get_strategy` name: `"auto"` (TPU,
            several GPUs, a TF_CONFIG cluster, else one device), `"tpu"`,
            `"mirrored"`, `"multi_worker"`, `"gpu"`, `"cpu"`, `"default"`.
            `batch_size` is per replica; the global batch is
            `batch_size * replicas`.
        tpu: str. TPU address for `distribution="tpu"` (`"local"` on a TPU VM).
        prompt_template: str. Label prompt for `method="prompt"`.
        prompt_tokens: int. Learnable prompt vectors for `"soft_prompt"`.
        prompt_learning_rate: float. Adam learning rate for `"soft_prompt"`.
        shots: int. Training examples per class for `"few_shot"` (drawn
            from the training split with `seed`). Defaults to 8.

    Example:

    >>> config = JobConfig.from_dict({"max_examples": 300, "method": "fine_tune"})
    >>> config.to_dict()["head_epochs"]
    30
    """

    backbone: str = AUTO
    dataset: str | None = None
    data: str | None = None
    val_data: str | None = None
    test_data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    task: str = "multiclass"
    label_separator: str | None = None
    class_names: list[str] | None = None
    on_error: str = "raise"
    image_size: list[int] | None = None
    encoding: str = "utf-8"
    threshold: float = 0.5
    sequence_length: int = 128
    batch_size: int = 32
    head_epochs: int = 30
    epochs: int = 1
    unfreeze_top: int = 2
    head_learning_rate: float = 3e-3
    learning_rate: float = 5e-5
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    max_examples: int | None = None
    export_dir: str | None = AUTO
    export_jit_compile: bool = False
    run_dir: str | None = None
    feature_cache: bool = True
    method: str = "fine_tune"
    distribution: str = "auto"
    tpu: str | None = None
    prompt_template: str = "This article is about {label}."
    prompt_tokens: int = 20
    prompt_learning_rate: float = 3e-2
    shots: int = 8

    def __post_init__(self):
        for name, (kind, low) in _FIELD_RULES.items():
            _check_field(name, getattr(self, name), kind, low)
        if self.max_examples is not None and self.max_examples < 10:
            raise ConfigError(
                f"max_examples: expected an integer >= 10, or null for all. Received: "
                f"{self.max_examples!r}"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "val_fraction + test_fraction must leave examples for training. Received: "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if self.dataset is not None and self.dataset not in TEXT_DATASETS:
            raise ConfigError(
                f"dataset: unknown dataset. Expected one of {sorted(TEXT_DATASETS)}, or "
                f"data: <your file, folder or TFDS name>. Received: {self.dataset!r}"
            )
        self._check_data()
        # A causal LM is any KerasHub causal-LM preset or folder; its job checks it on load.
        if self.backbone != AUTO and self.task != CAUSAL_LM_TASK:
            try:
                parse_spec(self.backbone)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"backbone: {error}") from None
        if self.method not in METHODS:
            raise ConfigError(
                f"method: unknown adaptation method. Expected one of {list(METHODS)}. "
                f"Received: {self.method!r}"
            )
        if self.distribution not in STRATEGY_NAMES:
            raise ConfigError(
                f"distribution: unknown distribution strategy. Expected one of "
                f"{list(STRATEGY_NAMES)}. Received: {self.distribution!r}"
            )
        if self.method in ("prompt", "few_shot") and "{label}" not in self.prompt_template:
            raise ConfigError(
                "prompt_template: must contain the {label} slot. Received: "
                f"{self.prompt_template!r}"
            )

    def _check_data(self):
        """The data settings agree with each other (each one's type is checked already)."""
        if self.data is not None and self.dataset is not None:
            raise ConfigError(
                f"dataset and data are two ways to name the data: give one. Received: "
                f"dataset={self.dataset!r}, data={self.data!r}"
            )
        for name in ("val_data", "test_data"):
            if getattr(self, name) is not None and self.data is None:
                raise ConfigError(
                    f"{name}: needs data (the training data) too. Received: "
                    f"{name}={getattr(self, name)!r}, data=None"
                )
        if self.task not in (*DATA_TASKS, CAUSAL_LM_TASK, *DENSE_VISION_TASKS):
            raise ConfigError(
                "task: unknown task. Expected one of "
                f"{[*DATA_TASKS, CAUSAL_LM_TASK, *DENSE_VISION_TASKS]}. "
                "Received: "
                f"{self.task!r}"
            )
        if self.on_error not in ON_ERROR:
            raise ConfigError(
                f"on_error: expected one of {list(ON_ERROR)}. Received: {self.on_error!r}"
            )
        if self.label_separator is not None and self.task != "multilabel":
            raise ConfigError(
                f"label_separator: only a multilabel task reads several labels per cell. "
                f"Received: label_separator={self.label_separator!r}, task={self.task!r}"
            )
        if self.task != "multiclass" and self.data is None:
            raise ConfigError(
                f"task: the bundled datasets are multiclass; task={self.task!r} needs "
                "data: <your file or folder>."
            )
        if self.task != "multiclass" and self.method != "fine_tune":
            raise ConfigError(
                f"method: {self.method!r} makes multiclass classifiers only. Received: "
                f"task={self.task!r}"
            )
        names = self.class_names
        if names is not None:
            if not isinstance(names, (list, tuple)) or not all(
                    isinstance(n, str) and n.strip() for n in names):
                raise ConfigError(
                    f"class_names: expected a list of non-empty strings. Received: {names!r}"
                )
            object.__setattr__(self, "class_names", list(names))
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ConfigError(f"class_names: {repeated} given twice. Received: {names!r}")
            if self.task == "regression":
                raise ConfigError("class_names: a regression has targets, not classes. "
                                  f"Received: {names!r}")
            wanted = 2 if self.task == "binary" else None
            if len(names) < 2 or (wanted and len(names) != wanted):
                raise ConfigError(
                    f"class_names: a {self.task} task needs "
                    f"{'exactly 2' if wanted else 'at least 2'} classes. Received: {names!r}"
                )
        size = self.image_size
        if size is not None:
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
                raise ConfigError(
                    f"image_size: expected [height, width], two positive integers. "
                    f"Received: {size!r}"
                )
            object.__setattr__(self, "image_size", list(size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> JobConfig:
        """Builds a config from a mapping (e.g. a parsed YAML file).

        The deprecated key `strategy` is read as `method`, with a
        `DeprecationWarning`.

        Args:
            data: dict. Setting name to value.
            path: str. Where `data` sits in a larger file, for messages.
        """
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path or 'config'}: expected a mapping of settings. Received: "
                f"{type(data).__name__}"
            )
        data = renamed_settings(data, path)
        valid = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(str(k) for k in set(data) - set(valid))
        if unknown:
            where = ", ".join(f"{path}{k}" for k in unknown)
            raise ConfigError(f"Unknown setting(s) {unknown} at {where}. Valid settings: {valid}")
        try:
            return cls(**data)
        except ConfigError as error:
            if path:
                raise ConfigError(f"{path}{error}") from None
            raise


def renamed_settings(data: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Maps deprecated setting names (`strategy`) to their new names (`method`).

    Warns with a `DeprecationWarning` per old name used; raises `ConfigError`
    when an old and a new name are both given with different values.
    """
    data = dict(data)
    for old, new in DEPRECATED_SETTINGS.items():
        if old not in data:
            continue
        value = data.pop(old)
        if new in data and data[new] != value:
            raise ConfigError(
                f"{path}{old} is a deprecated alias of {new}, and they disagree. Received: "
                f"{old}={value!r}, {new}={data[new]!r}. Keep only {new}."
            )
        warnings.warn(
            f"The setting {path}{old!r} is deprecated: use {new!r} ({new}: {value!r}); "
            f"{old!r} now means tf.distribute only (the setting 'distribution').",
            DeprecationWarning, stacklevel=3,
        )
        data[new] = value
    return data


class _StrictYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    YAML requires keys to be unique, but PyYAML keeps the last value silently,
    so `epochs: 1` followed by `epochs: 20` would run 20 epochs unnoticed.
    """

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            # Merge keys (`<<: *base`) are meant to be overridden; complex keys
            # are left to the base class, which refuses the unhashable ones.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first given on line {first_line[key] + 1})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _unique_json_object(pairs):
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"duplicate key(s) {repeated} in one object")
    return dict(pairs)


def _refuse_json_constant(name):
    raise ValueError(f"{name} is not a JSON value (write a number, or null)")


def load_config_file(path: str) -> dict[str, Any]:
    """Reads a YAML (`.yaml`, `.yml`) or JSON file of settings into a dict.

    What a parser would let slip is a `ConfigError` here: a key given twice
    (YAML and JSON parsers keep the last one silently), `NaN`/`Infinity` in
    JSON (not JSON), a file that is not a mapping, and setting names that are
    not strings. The values are checked later, by `JobConfig.from_dict`.

    Args:
        path: str. The file.

    Returns:
        The settings, setting name to value.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise ConfigError(f"Cannot read the config file {path!r}: {error.strerror}.") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"The config file {path!r} is not UTF-8 text: {error}.") from None
    if path.endswith((".yaml", ".yml")):
        try:
            data = yaml.load(text, Loader=_StrictYAMLLoader)
        except yaml.YAMLError as error:
            detail = " ".join(str(error).split())
            raise ConfigError(f"The config file {path!r} is not valid YAML: {detail}") from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=_unique_json_object,
                              parse_constant=_refuse_json_constant)
        except ValueError as error:
            raise ConfigError(f"The config file {path!r} is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"The config file {path!r} must hold a mapping of settings (setting: value). "
            f"Received: {'an empty file' if data is None else type(data).__name__}"
        )
    not_names = [key for key in data if not isinstance(key, str)]
    if not_names:
        raise ConfigError(
            f"The config file {path!r}: setting names must be strings such as 'epochs'. "
            f"Received: {not_names}"
        )
    return data


# name -> (kind, lowest allowed value)
_FIELD_RULES = {
    "backbone": ("str", None),
    "dataset": ("optional_str", None),
    "data": ("optional_str", None),
    "val_data": ("optional_str", None),
    "test_data": ("optional_str", None),
    "text_column": ("str", None),
    "label_column": ("str", None),
    "task": ("str", None),
    "label_separator": ("optional_str_raw", None),
    "on_error": ("str", None),
    "encoding": ("str", None),
    "threshold": ("fraction", None),
    "sequence_length": ("int", 1),
    "batch_size": ("int", 1),
    "head_epochs": ("int", 1),
    "epochs": ("int", 0),
    "unfreeze_top": ("int", 0),
    "head_learning_rate": ("positive_float", None),
    "learning_rate": ("positive_float", None),
    "val_fraction": ("fraction", None),
    "test_fraction": ("fraction", None),
    "seed": ("int", 0),
    "max_examples": ("optional_int", None),
    "export_dir": ("optional_str", None),
    "export_jit_compile": ("bool", None),
    "run_dir": ("optional_str", None),
    "feature_cache": ("bool", None),
    "method": ("str", None),
    "distribution": ("str", None),
    "tpu": ("optional_str", None),
    "prompt_template": ("str", None),
    "prompt_tokens": ("int", 1),
    "prompt_learning_rate": ("positive_float", None),
    "shots": ("int", 2),
}


def _check_field(name, value, kind, low):
    """Checks one setting's type and range; the message starts with its key."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and (not is_int or value < low):
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            low, f"an integer >= {low}")
        raise ConfigError(f"{name}: expected {what}. Received: {value!r}")
    if kind == "optional_int" and value is not None and not is_int:
        raise ConfigError(f"{name}: expected an integer or null. Received: {value!r}")
    if kind == "positive_float" and (
        not is_number or not value > 0 or value != value or value == float("inf")
    ):
        raise ConfigError(f"{name}: expected a positive finite number. Received: {value!r}")
    if kind == "fraction" and (not is_number or not 0.0 < value < 1.0):
        raise ConfigError(f"{name}: expected a number between 0 and 1. Received: {value!r}")
    if kind == "str" and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{name}: expected a non-empty string. Received: {value!r}")
    if kind == "optional_str" and value is not None and (
        not isinstance(value, str) or not value.strip()
    ):
        raise ConfigError(f"{name}: expected a non-empty string or null. Received: {value!r}")
    if kind == "optional_str_raw" and value is not None and (
        not isinstance(value, str) or not value
    ):
        raise ConfigError(f"{name}: expected a non-empty string or null. Received: {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false. Received: {value!r}")


def check_writable(path, what):
    """Fails before any work when `path` cannot be created or written."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ConfigError(f"The {what} {path!r} is inside a file ({probe!r}), not a directory.")
    try:
        # os.access says yes to root everywhere; a real probe directory does not lie.
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".tfft-write-probe-"))
    except OSError as error:
        raise ConfigError(
            f"The {what} {path!r} is not writable ({error.strerror} in {probe!r}). "
            "Choose a directory you can write to."
        ) from None


__all__ = [
    "DATA_TASKS",
    "DEFAULT_BACKBONES",
    "DENSE_VISION_TASKS",
    "DEPRECATED_SETTINGS",
    "METHODS",
    "ConfigError",
    "JobConfig",
    "load_config_file",
    "renamed_settings",
]
