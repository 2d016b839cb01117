"""The bake-off's candidate runners: TF-IDF, custom, linear probe, zero-shot, fine-tune.

Each runner scores one candidate on the validation data and records a row
in the run's `Budget` (finished, or skipped with the reason). Candidates on
the same backbone share one load and one linear probe: the probe's features
come from `tfft.training.feature_cache`, and a fine-tune starts from the
probe's head and trains through `tfft.training.fine_tune`, the recipe the
main job uses.
"""

import dataclasses
import math
import time
import warnings

import keras
import numpy as np

from tfft.adapt.freeze import apply_freeze, parse_freeze
from tfft.assets import AssetNotFoundError
from tfft.backbones import NetworkUnavailableError, load_backbone
from tfft.data import make_dataset
from tfft.models import build_model
from tfft.prompting.encoder import ZeroShotEncoderClassifier
from tfft.selection import metrics as M
from tfft.selection.budget import (
    TIMING_EXAMPLES,
    Budget,
    StepTimeLimit,
    plan_fine_tune,
    probe_estimate,
    seconds_per_example,
)
from tfft.selection.candidates import TFIDF, catalog_info
from tfft.training import feature_cache
from tfft.training.callbacks import TrainingDivergedError
from tfft.training.recipes import fine_tune

FINE_TUNE_LEARNING_RATE = {"transformer": 5e-5, "cnn": 1e-3}
# Why a backbone cannot be loaded on this machine: the row says so and the bake-off goes on.
UNAVAILABLE_ERRORS = (NetworkUnavailableError, AssetNotFoundError, ImportError)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The `select()` settings the runners read."""

    fine_tune_seconds: float | None = None
    sequence_length: int = 128
    batch_size: int = 32
    zero_shot_template: str | None = None
    label_words: dict | None = None
    seed: int = 0


@dataclasses.dataclass
class BackboneState:
    """A loaded backbone shared by the candidates that use it."""

    backbone: object
    load_seconds: float
    model: object = None
    seconds_per_example: float = None
    probe: dict = None


class Runners:
    """Runs candidates on `train` / `val` and records their rows in `budget`.

    Args:
        train: `tfft.data.LabeledData`.
        val: `tfft.data.LabeledData`.
        budget: `Budget`. The time account the rows go to.
        settings: `RunSettings`.
    """

    def __init__(self, train, val, budget: Budget, settings: RunSettings):
        self.train, self.val = train, val
        self.budget = budget
        self.settings = settings
        self.modality = train.modality
        self.num_classes = len(train.class_names)
        self.states = {}

    def run(self, candidate, estimate: float | None) -> None:
        """Runs `candidate` (or records why it was skipped)."""
        budget = self.budget
        if candidate.modality is not None and candidate.modality != self.modality:
            return budget.skip(candidate, f"modality mismatch: the candidate takes "
                               f"{candidate.modality}, the data is {self.modality}")
        reason = budget.over(estimate)
        if reason:
            return budget.skip(candidate, reason, estimate)
        if candidate.method == TFIDF:
            return self.run_tfidf(candidate, estimate)
        if candidate.method == "custom":
            return self.run_custom(candidate, estimate)
        try:
            state = self.load(candidate)
        except UNAVAILABLE_ERRORS as error:
            return budget.skip(candidate, f"backbone unavailable here: {_first_line(error)}",
                               estimate)
        # Every backbone candidate's time includes one load of its backbone,
        # whichever candidate happened to load it first.
        t0 = time.perf_counter() - state.load_seconds
        if state.backbone.modality != self.modality:
            return budget.skip(candidate, f"modality mismatch: the backbone takes "
                               f"{state.backbone.modality}, the data is {self.modality}")
        if candidate.method == "zero_shot":
            return self.run_zero_shot(candidate, state, t0, estimate)
        if candidate.is_fine_tune:
            return self.run_fine_tune(candidate, state, t0, estimate)
        return self.run_feature_extraction(candidate, state, t0, estimate)

    def score(self, predictions) -> float:
        return M.score(self.budget.metric, self.val.y, predictions, self.num_classes)

    # -- shared backbone work -----------------------------------------------------

    def load_kwargs(self, candidate) -> dict:
        kwargs = dict(candidate.load_kwargs)
        if _is_text_spec(candidate.backbone_spec):
            kwargs.setdefault("sequence_length", self.settings.sequence_length)
        return kwargs

    def load(self, candidate) -> BackboneState:
        """The candidate's backbone, loaded once per spec and load options."""
        key = candidate.spec_key
        if key not in self.states:
            t0 = time.perf_counter()
            backbone = load_backbone(candidate.backbone_spec, **self.load_kwargs(candidate))
            seconds = time.perf_counter() - t0
            self.states[key] = BackboneState(backbone, seconds)
            self.budget.log(f"loaded {candidate.name.rsplit(':', 1)[0]} in {seconds:.1f} s")
        return self.states[key]

    def make_inputs(self, backbone):
        """A function: raw inputs -> batched tf.data of the backbone's preprocessed inputs."""
        batch_size = self.settings.batch_size

        def make(x):
            ds = make_dataset((np.asarray(x), np.zeros(len(x), np.int64)), backbone,
                              batch_size=batch_size)
            return ds.map(lambda inputs, labels: inputs)

        return make

    def feature_model(self, state):
        """The backbone's frozen `build_model` (its head is the probe's), built once."""
        if state.model is None:
            state.model = build_model(state.backbone, task="multiclass",
                                      num_classes=self.num_classes,
                                      freeze="feature_extraction", compile=False)
        return state.model

    def time_forward(self, state) -> float:
        """Seconds per example through preprocessing and the frozen backbone, measured once."""
        if state.seconds_per_example is None:
            features = feature_cache.feature_model(self.feature_model(state))
            batches = self.make_inputs(state.backbone)(self.train.x[:TIMING_EXAMPLES])
            state.seconds_per_example = seconds_per_example(features, batches)
        return state.seconds_per_example

    def probe(self, state):
        """Linear probe on cached features; returns `(probe dict, None)` or `(None, reason)`."""
        if state.probe is not None:
            return state.probe, None
        t0 = time.perf_counter()
        model = self.feature_model(state)
        per_example = self.time_forward(state)
        backbone = state.backbone
        prep = {"preprocessor": _describe(backbone.preprocessor), "modality": self.modality}
        both = np.concatenate([np.asarray(self.train.x), np.asarray(self.val.x)])
        to_compute = 0 if _cache_hit(model, both, prep) else len(both)
        estimate = probe_estimate(per_example, to_compute)
        reason = self.budget.over(estimate)
        if reason:
            return None, (f"{reason} (backbone measured at {1 / per_example:.1f} examples/s "
                          f"on a {TIMING_EXAMPLES}-example batch, {to_compute} to embed)")
        # One pass (one traced predict function) over train and val together.
        features, hit = feature_cache.cached_features(model, both, self.make_inputs(backbone),
                                                      prep, verbose=0)
        features = np.asarray(features)
        train_f, val_f = features[:len(self.train)], features[len(self.train):]
        t_head = time.perf_counter()
        predictions = fit_linear_head(model, train_f, self.train.y, val_f, self.num_classes,
                                      self.settings.seed)
        state.probe = {
            "predictions": predictions,
            "seconds": time.perf_counter() - t0,
            "head_seconds": time.perf_counter() - t_head,
            "estimate": estimate,
            "cache_hit": bool(hit),
            "feature_dim": int(train_f.shape[-1]),
            "inference_per_second": 1.0 / per_example,
        }
        return state.probe, None

    # -- candidates ---------------------------------------------------------------

    def run_tfidf(self, candidate, estimate):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        t0 = time.perf_counter()
        # SAG suits L2-normalised TF-IDF rows and ran 3-5x faster than lbfgs here.
        pipeline = make_pipeline(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1,
                            max_features=100_000),
            LogisticRegression(C=10.0, max_iter=1000, solver="sag",
                               random_state=self.settings.seed),
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            pipeline.fit([str(t) for t in self.train.x], self.train.y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        predictions = pipeline.predict([str(t) for t in self.val.x])
        infer = len(self.val) / max(time.perf_counter() - t1, 1e-9)
        clf = pipeline[-1]
        vocab = len(pipeline[0].vocabulary_)
        self.budget.record(
            candidate, self.score(predictions), time.perf_counter() - t0,
            clf.coef_.size + clf.intercept_.size, infer,
            f"TF-IDF (1-2 grams, {vocab:,} terms) + logistic regression C=10; "
            f"fit {train_seconds:.1f} s" + ("" if converged else " (stopped at max_iter=1000)"),
            estimate, model=pipeline,
        )

    def run_custom(self, candidate, estimate):
        t0 = time.perf_counter()
        result = candidate.fit_predict(self.train, self.val)
        if not isinstance(result, dict) or "predictions" not in result:
            raise TypeError(
                f"Custom candidate {candidate.name!r}: fit_predict must return a dict with "
                f"'predictions'. Received: {type(result).__name__}"
            )
        seconds = time.perf_counter() - t0
        self.budget.record(candidate, self.score(result["predictions"]), seconds,
                           result.get("params"), len(self.val) / max(seconds, 1e-9),
                           result.get("reason", "custom fit_predict"), estimate,
                           model=result.get("model"))

    def run_feature_extraction(self, candidate, state, t0, estimate):
        probe, reason = self.probe(state)
        if reason:
            return self.budget.skip(candidate, reason, estimate)
        model = state.model
        self.budget.record(
            candidate, self.score(probe["predictions"]), time.perf_counter() - t0,
            model.count_params(), probe["inference_per_second"],
            f"linear probe: logistic regression on {probe['feature_dim']}-d pooled features "
            f"({'cache hit' if probe['cache_hit'] else 'features computed once, cached'}; "
            f"head {probe['head_seconds']:.1f} s); {len(self.train)} train / "
            f"{len(self.val)} val", estimate, model=model,
        )

    def run_zero_shot(self, candidate, state, t0, estimate):
        settings = self.settings
        if self.modality != "text":
            return self.budget.skip(candidate, "zero-shot here scores text with a sentence "
                                    "encoder; image zero-shot needs CLIP weights, which are "
                                    "not bundled")
        class_names = list(self.train.class_names)
        verbalizer = settings.label_words or {
            name: [name.replace("_", " ")] for name in class_names
        }
        kwargs = {"verbalizer": verbalizer, "class_names": class_names,
                  "batch_size": settings.batch_size}
        if settings.zero_shot_template is not None:
            kwargs["template"] = settings.zero_shot_template
        classifier = ZeroShotEncoderClassifier(state.backbone, **kwargs)
        sample = list(self.val.x[:TIMING_EXAMPLES])
        classifier.scores(sample)  # traces, embeds the label prompts
        t1 = time.perf_counter()
        classifier.scores(sample)
        per_example = (time.perf_counter() - t1) / len(sample)
        reason = self.budget.over(per_example * len(self.val))
        if reason:
            return self.budget.skip(candidate, f"{reason} ({1 / per_example:.1f} examples/s "
                                    "measured)", estimate)
        t2 = time.perf_counter()
        predictions = classifier.scores(list(self.val.x)).argmax(axis=-1)
        infer = len(self.val) / max(time.perf_counter() - t2, 1e-9)
        template = settings.zero_shot_template or "the default template"
        self.budget.record(
            candidate, self.score(predictions), time.perf_counter() - t0,
            state.backbone.model.count_params(), infer,
            f"zero-shot: cosine similarity to label prompts ({template!s}; label words "
            f"{_words(verbalizer)}); no training", estimate, model=classifier,
        )

    def run_fine_tune(self, candidate, state, t0, estimate):
        """Probe head first, then `tfft.training.fine_tune` within the planned steps and time."""
        budget, settings = self.budget, self.settings
        if not isinstance(candidate.backbone_spec, str):
            return budget.skip(candidate, "fine-tuning loads a fresh copy of the backbone, "
                               "which needs a spec string; a Backbone object would be "
                               "changed in place", estimate)
        if not state.backbone.block_names and candidate.method.startswith("top_k:"):
            return budget.skip(candidate, "the backbone declares no blocks, so top_k cannot "
                               "choose layers")
        earlier_probe = state.probe is not None
        probe, reason = self.probe(state)
        if reason:
            return budget.skip(candidate, f"its linear probe does not fit: {reason}", estimate)
        plan, reason = plan_fine_tune(
            budget, candidate.method, state.seconds_per_example, settings.batch_size,
            len(self.train), len(self.val), state.load_seconds, settings.fine_tune_seconds,
        )
        if reason:
            return budget.skip(candidate, reason, estimate)
        # A fresh copy: the shared backbone keeps its pretrained weights for
        # the other candidates, and this one ends up trained.
        fresh = load_backbone(candidate.backbone_spec, **self.load_kwargs(candidate))
        model = build_model(fresh, task="multiclass", num_classes=self.num_classes,
                            freeze="feature_extraction", compile=False)
        model.get_layer("head").set_weights(state.model.get_layer("head").get_weights())
        try:
            apply_freeze(model, parse_freeze(candidate.method))
        except ValueError as error:
            # Reported as the row's reason: the policy cannot be applied to
            # this backbone, and the rest of the bake-off goes on.
            return budget.skip(candidate, f"freeze={candidate.method!r} cannot be applied to "
                               f"this backbone: {_first_line(error)}", estimate)
        family = fresh.info.family
        rate = FINE_TUNE_LEARNING_RATE.get(family, 5e-5)
        # Exactly the planned steps as one pass (epochs reshuffle), so the
        # recipe's warmup/decay schedule spans the plan.
        steps_per_epoch = math.ceil(len(self.train) / settings.batch_size)
        train_ds = self.fit_batches(model, fresh, self.train, shuffle=True)
        train_ds = train_ds.repeat(math.ceil(plan.steps / steps_per_epoch)).take(plan.steps)
        limit = StepTimeLimit(plan.seconds, plan.steps)
        t_fit = time.perf_counter()
        # The head is trained already (the probe's), so the recipe runs its
        # unfreeze stage only, at `rate` (lr / base_lr_divisor). Preset "auto":
        # the recipe picks it from the backbone's family and, for CNNs, from
        # whether the backbone has BatchNorm (SGD blows up plain VGGs).
        try:
            fine_tune(model, train_ds, epochs=1, freeze_epochs=0, unfreeze=candidate.method,
                      lr=rate, base_lr_divisor=1, callbacks=[limit], verbose=0,
                      preset="auto")
        except TrainingDivergedError as error:
            # One diverging candidate is a result about that candidate; the
            # rest of the bake-off goes on.
            return budget.skip(candidate, f"diverged: {_first_line(error)}", estimate)
        fit_seconds = time.perf_counter() - t_fit
        t_eval = time.perf_counter()
        probs = model.predict(self.fit_batches(model, fresh, self.val), verbose=0)
        infer = len(self.val) / max(time.perf_counter() - t_eval, 1e-9)
        budget.record(
            candidate, self.score(np.argmax(probs, axis=-1)),
            time.perf_counter() - t0 + (probe["seconds"] if earlier_probe else 0.0),
            model.count_params(), infer,
            f"head from the linear probe, then {candidate.method} fine-tuning: "
            f"{limit.steps} steps of {settings.batch_size} ({fit_seconds:.0f} s, stopped by "
            f"{limit.stopped_by}; planned {plan.steps}), lr {rate:g}; time includes the probe",
            estimate, model=model,
        )

    def fit_batches(self, model, backbone, data, shuffle=False):
        """Batches of `(inputs, labels)` in the form `model.fit` / `predict` take.

        A model with a `preprocessor` (a `tfft.Task`) preprocesses raw batches
        itself, so it gets them resized but not normalised; a plain Keras
        model gets the backbone's preprocessed inputs.
        """
        raw = getattr(model, "preprocessor", None) is not None
        return make_dataset(data, backbone, preprocess=_identity if raw else None,
                            batch_size=self.settings.batch_size, shuffle=shuffle,
                            seed=self.settings.seed)


def fit_linear_head(model: keras.Model, train_f: np.ndarray, train_y: np.ndarray,
                    val_f: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Logistic regression on features, copied into the model's softmax head.

    Standardisation is folded into the weights, so the Keras model predicts
    exactly what the scikit-learn model does. Returns predictions on `val_f`.
    """
    from sklearn.linear_model import LogisticRegression

    mean = train_f.mean(axis=0)
    std = train_f.std(axis=0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit((train_f - mean) / std, train_y)
    coef = np.zeros((num_classes, train_f.shape[1]))
    bias = np.zeros(num_classes)
    if clf.coef_.shape[0] == 1:  # two classes: sigmoid(w.x + b) == softmax([0, w.x + b])
        coef[clf.classes_[1]] = clf.coef_[0]
        bias[clf.classes_[1]] = clf.intercept_[0]
    else:
        coef[clf.classes_] = clf.coef_
        bias[clf.classes_] = clf.intercept_
        # Classes absent from train never win.
        missing = np.setdiff1d(np.arange(num_classes), clf.classes_)
        bias[missing] = -1e9
    kernel = (coef / std).T
    bias = bias - (coef * (mean / std)).sum(axis=1)
    head = model.get_layer("head")
    weights = head.get_weights()
    weights[-2], weights[-1] = kernel.astype(np.float32), bias.astype(np.float32)
    head.set_weights(weights)
    return np.argmax(val_f @ kernel + bias, axis=-1)


def _identity(batch):
    return batch


def _cache_hit(model, x, prep):
    return feature_cache.is_cached(model, x, prep)   # a broken entry is a miss


def _describe(preprocessor):
    if preprocessor is None:
        return None
    if hasattr(preprocessor, "describe"):
        return preprocessor.describe()
    if hasattr(preprocessor, "get_config"):
        return preprocessor.get_config()
    return type(preprocessor).__name__


def _is_text_spec(spec):
    info = catalog_info(spec)
    return info is not None and info.modality == "text" and isinstance(spec, str)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _words(verbalizer):
    if isinstance(verbalizer, dict):
        return {k: list(v) for k, v in verbalizer.items()}
    return verbalizer
