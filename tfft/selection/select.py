"""`select()`: an empirical bake-off of candidates under a time budget."""

import dataclasses
import math
import time

import numpy as np

from tfft.selection import metrics as M
from tfft.selection.candidates import TFIDF, Candidate, catalog_info, parse_candidates
from tfft.selection.leaderboard import Leaderboard, LeaderboardRow
from tfft.selection.recommend import estimate_seconds

# Seconds to load a backbone and trace its first forward pass, before any
# measurement exists (MiniLM loads in about 5 s on 2 cores, tracing adds 2-5).
LOAD_OVERHEAD_SECONDS = 10.0
# Extra seconds to trace a training step and a fresh prediction function.
TRACE_OVERHEAD_SECONDS = 10.0
TIMING_EXAMPLES = 16
MIN_FINE_TUNE_STEPS = 5
MAX_FINE_TUNE_EPOCHS = 2
FINE_TUNE_LEARNING_RATE = {"transformer": 5e-5, "cnn": 1e-3}


@dataclasses.dataclass
class _BackboneState:
    """A loaded backbone shared by the candidates that use it."""

    backbone: object
    load_seconds: float
    model: object = None
    seconds_per_example: float = None
    probe: dict = None


class _TimeLimit:
    """A Keras callback that stops training after `seconds` or `max_steps` steps."""

    def __new__(cls, seconds, max_steps):
        import keras

        class TimeLimit(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.limit = seconds
                self.max_steps = max_steps
                self.steps = 0
                self.started = None
                self.stopped_by = "data"

            def on_train_begin(self, logs=None):
                self.started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.steps += 1
                if self.steps >= self.max_steps:
                    self.stopped_by = "plan"
                    self.model.stop_training = True
                elif time.perf_counter() - self.started > self.limit:
                    self.stopped_by = "time"
                    self.model.stop_training = True

        return TimeLimit()


def _check_data(train, val):
    from tfft.data import LabeledData

    for name, data in (("train", train), ("val", val)):
        if not isinstance(data, LabeledData):
            raise TypeError(
                f"select() takes tfft.data.LabeledData for {name}. "
                f"Received: {name} of type {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError(f"select() needs examples in {name}. Received: 0 examples.")
        if np.asarray(data.y).ndim != 1:
            raise ValueError(
                f"select() ranks single-label classifiers; {name}.y must be 1D class ids. "
                f"Received shape {np.asarray(data.y).shape}."
            )
    if list(train.class_names) != list(val.class_names):
        raise ValueError(
            "train and val must share class_names. Received: "
            f"{list(train.class_names)} and {list(val.class_names)}"
        )
    if len(train.class_names) < 2 or len(np.unique(train.y)) < 2:
        raise ValueError(
            "select() needs at least 2 classes present in train. Received classes "
            f"{sorted(set(np.asarray(train.y).tolist()))} of {list(train.class_names)}."
        )
    if train.modality != val.modality:
        raise ValueError(
            f"train holds {train.modality} and val holds {val.modality}; they must match."
        )


def _positive(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number. Received: {name}={value!r}")
    return float(value)


def _unavailable_errors():
    from tfft.assets import AssetNotFoundError
    from tfft.backbones import NetworkUnavailableError

    return (NetworkUnavailableError, AssetNotFoundError, ImportError)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class _BakeOff:
    def __init__(self, train, val, budget, metric, fine_tune_seconds, sequence_length,
                 batch_size, zero_shot_template, label_words, seed, verbose):
        self.train, self.val = train, val
        self.budget = budget
        self.metric = metric
        self.fine_tune_seconds = fine_tune_seconds
        self.sequence_length = sequence_length
        self.batch_size = batch_size
        self.zero_shot_template = zero_shot_template
        self.label_words = label_words
        self.seed = seed
        self.verbose = verbose
        self.modality = train.modality
        self.num_classes = len(train.class_names)
        self.started = time.perf_counter()
        self.states = {}
        self.rows = []
        self.models = {}

    # -- time -----------------------------------------------------------------
    def elapsed(self):
        return time.perf_counter() - self.started

    def remaining(self):
        return self.budget - self.elapsed()

    def log(self, message):
        if self.verbose:
            print(f"[tfft select {self.elapsed():6.1f}s] {message}", flush=True)

    def skip(self, candidate, reason, estimate=None):
        self.log(f"skip {candidate.name}: {reason}")
        self.rows.append(LeaderboardRow(
            candidate=candidate.name, strategy=candidate.strategy,
            backbone_spec=_spec_text(candidate), metric=self.metric, status="skipped",
            reason=reason, estimated_seconds=_round(estimate),
            load_kwargs=dict(candidate.load_kwargs),
        ))

    def over_budget(self, estimate):
        left = self.remaining()
        if estimate is not None and estimate > left:
            return (f"estimated {estimate:.0f} s > {max(left, 0):.0f} s left of the "
                    f"{self.budget:.0f} s budget")
        return None

    # -- estimates --------------------------------------------------------------
    def prior_estimate(self, candidate):
        """Cost before anything is loaded (None when unknown)."""
        if candidate.estimated_seconds is not None:
            return float(candidate.estimated_seconds)
        n_train, n_val = len(self.train), len(self.val)
        if candidate.strategy == TFIDF:
            return 1.0 + 0.002 * (n_train + n_val)
        if candidate.strategy == "custom":
            return None
        info = catalog_info(candidate.backbone_spec)
        if info is None or not info.params:
            return None

        def cost(strategy, n):
            return estimate_seconds(info.params, info.modality, strategy, n, "cpu",
                                    self.sequence_length)

        if candidate.strategy == "zero_shot":
            return LOAD_OVERHEAD_SECONDS + cost("zero_shot", n_val)
        probe = LOAD_OVERHEAD_SECONDS + cost("feature_extraction", n_train + n_val)
        if not candidate.is_fine_tune:
            return probe
        kind = "full" if candidate.strategy == "full" else "top_k:2"
        one_epoch = cost(kind, n_train) / 3.0
        return (probe + LOAD_OVERHEAD_SECONDS + TRACE_OVERHEAD_SECONDS + one_epoch
                + cost("feature_extraction", n_val))

    # -- shared backbone work -----------------------------------------------------
    def load(self, candidate):
        key = candidate.spec_key
        if key in self.states:
            return self.states[key], 0.0
        import tfft

        t0 = time.perf_counter()
        kwargs = dict(candidate.load_kwargs)
        spec = candidate.backbone_spec
        if isinstance(spec, str) and _is_text_spec(spec):
            kwargs.setdefault("sequence_length", self.sequence_length)
        backbone = tfft.load_backbone(spec, **kwargs)
        seconds = time.perf_counter() - t0
        self.states[key] = _BackboneState(backbone, seconds)
        self.log(f"loaded {candidate.name.rsplit(':', 1)[0]} in {seconds:.1f} s")
        return self.states[key], seconds

    def make_inputs(self, backbone):
        from tfft.data import make_dataset

        def make(x):
            ds = make_dataset((np.asarray(x), np.zeros(len(x), np.int64)), backbone,
                              batch_size=self.batch_size)
            return ds.map(lambda inputs, labels: inputs)

        return make

    def feature_model(self, state):
        import tfft

        if state.model is None:
            state.model = tfft.build_model(
                state.backbone, task="multiclass", num_classes=self.num_classes,
                freeze="feature_extraction", compile=False,
            )
        return state.model

    def time_forward(self, state):
        """Seconds per example of preprocessing + the frozen backbone, from a timed batch.

        A Keras `predict` call carries seconds of fixed overhead (iterator,
        tracing), so the batch runs through a traced function instead and
        the overhead is estimated separately (`TRACE_OVERHEAD_SECONDS`).
        """
        if state.seconds_per_example is None:
            import tensorflow as tf

            from tfft.training import feature_cache

            model = self.feature_model(state)
            features = feature_cache.feature_model(model)
            dataset = self.make_inputs(state.backbone)(self.train.x[:TIMING_EXAMPLES])
            batch = next(iter(dataset))
            t0 = time.perf_counter()
            batch = next(iter(dataset))  # preprocessing, traced already
            prep_seconds = time.perf_counter() - t0
            forward = tf.function(lambda inputs: features(inputs, training=False))
            forward(batch)  # traces
            t1 = time.perf_counter()
            forward(batch)
            seconds = prep_seconds + time.perf_counter() - t1
            count = int(tf.nest.flatten(batch)[0].shape[0])
            state.seconds_per_example = seconds / count
        return state.seconds_per_example

    def probe(self, candidate, state):
        """Linear probe on cached features; returns the probe dict or a skip reason."""
        if state.probe is not None:
            return state.probe, None
        from tfft.training import feature_cache

        t0 = time.perf_counter()
        model = self.feature_model(state)
        per_example = self.time_forward(state)
        backbone = state.backbone
        pre = backbone.preprocessor
        prep = {"preprocessor": _describe(pre), "modality": self.modality}
        both = np.concatenate([np.asarray(self.train.x), np.asarray(self.val.x)])
        to_compute = 0 if _cache_hit(model, both, prep) else len(both)
        estimate = per_example * to_compute + TRACE_OVERHEAD_SECONDS if to_compute else 2.0
        reason = self.over_budget(estimate)
        if reason:
            return None, (f"{reason} (backbone measured at {1 / per_example:.1f} examples/s "
                          f"on a {TIMING_EXAMPLES}-example batch, {to_compute} to embed)")
        make = self.make_inputs(backbone)
        # One pass (one traced predict function) over train and val together.
        features, hit = feature_cache.cached_features(model, both, make, prep, verbose=0)
        features = np.asarray(features)
        train_f, val_f = features[:len(self.train)], features[len(self.train):]
        t_head = time.perf_counter()
        predictions = _fit_linear_head(model, np.asarray(train_f), self.train.y,
                                       np.asarray(val_f), self.num_classes, self.seed)
        head_seconds = time.perf_counter() - t_head
        state.probe = {
            "predictions": predictions,
            "seconds": time.perf_counter() - t0,
            "head_seconds": head_seconds,
            "estimate": estimate,
            "cache_hit": bool(hit),
            "feature_dim": int(np.asarray(train_f).shape[-1]),
            "inference_per_second": 1.0 / per_example,
        }
        return state.probe, None

    # -- candidates ---------------------------------------------------------------
    def run(self, candidate, estimate):
        if candidate.modality is not None and candidate.modality != self.modality:
            return self.skip(candidate, f"modality mismatch: the candidate takes "
                             f"{candidate.modality}, the data is {self.modality}")
        reason = self.over_budget(estimate)
        if reason:
            return self.skip(candidate, reason, estimate)
        if candidate.strategy == TFIDF:
            return self.run_tfidf(candidate, estimate)
        if candidate.strategy == "custom":
            return self.run_custom(candidate, estimate)
        try:
            state, _ = self.load(candidate)
        except _unavailable_errors() as error:
            return self.skip(candidate, f"backbone unavailable here: {_first_line(error)}",
                             estimate)
        # Every backbone candidate's time includes one load of its backbone,
        # whichever candidate happened to load it first.
        t0 = time.perf_counter() - state.load_seconds
        if state.backbone.modality != self.modality:
            return self.skip(candidate, f"modality mismatch: the backbone takes "
                             f"{state.backbone.modality}, the data is {self.modality}")
        if candidate.strategy == "zero_shot":
            return self.run_zero_shot(candidate, state, t0, estimate)
        if candidate.is_fine_tune:
            return self.run_fine_tune(candidate, state, t0, estimate)
        return self.run_feature_extraction(candidate, state, t0, estimate)

    def add_row(self, candidate, value, seconds, params, per_second, reason, estimate,
                model=None):
        self.log(f"done {candidate.name}: {self.metric}={value:.4f} in {seconds:.1f} s")
        self.rows.append(LeaderboardRow(
            candidate=candidate.name, strategy=candidate.strategy,
            backbone_spec=_spec_text(candidate), metric=self.metric, value=round(value, 6),
            train_seconds=round(seconds, 3), params=None if params is None else int(params),
            inference_per_second=_round(per_second), estimated_seconds=_round(estimate),
            status="ok", reason=reason, load_kwargs=dict(candidate.load_kwargs),
        ))
        if model is not None:
            self.models[candidate.name] = model

    def score(self, predictions):
        return M.score(self.metric, self.val.y, predictions, self.num_classes)

    def run_tfidf(self, candidate, estimate):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        t0 = time.perf_counter()
        # SAG suits L2-normalised TF-IDF rows and ran 3-5x faster than lbfgs here.
        pipeline = make_pipeline(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1,
                            max_features=100_000),
            LogisticRegression(C=10.0, max_iter=1000, solver="sag", random_state=self.seed),
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
        self.add_row(candidate, self.score(predictions), time.perf_counter() - t0,
                     clf.coef_.size + clf.intercept_.size, infer,
                     f"TF-IDF (1-2 grams, {vocab:,} terms) + logistic regression C=10; "
                     f"fit {train_seconds:.1f} s"
                     + ("" if converged else " (stopped at max_iter=1000)"),
                     estimate, model=pipeline)

    def run_custom(self, candidate, estimate):
        t0 = time.perf_counter()
        result = candidate.fit_predict(self.train, self.val)
        if not isinstance(result, dict) or "predictions" not in result:
            raise TypeError(
                f"Custom candidate {candidate.name!r}: fit_predict must return a dict with "
                f"'predictions'. Received: {type(result).__name__}"
            )
        seconds = time.perf_counter() - t0
        self.add_row(candidate, self.score(result["predictions"]), seconds,
                     result.get("params"), len(self.val) / max(seconds, 1e-9),
                     result.get("reason", "custom fit_predict"), estimate,
                     model=result.get("model"))

    def run_feature_extraction(self, candidate, state, t0, estimate):
        probe, reason = self.probe(candidate, state)
        if reason:
            return self.skip(candidate, reason, estimate)
        model = state.model
        self.add_row(
            candidate, self.score(probe["predictions"]), time.perf_counter() - t0,
            model.count_params(), probe["inference_per_second"],
            f"linear probe: logistic regression on {probe['feature_dim']}-d pooled features "
            f"({'cache hit' if probe['cache_hit'] else 'features computed once, cached'}; "
            f"head {probe['head_seconds']:.1f} s); {len(self.train)} train / "
            f"{len(self.val)} val", estimate, model=model,
        )

    def run_zero_shot(self, candidate, state, t0, estimate):
        if self.modality != "text":
            return self.skip(candidate, "zero-shot here scores text with a sentence encoder; "
                             "image zero-shot needs CLIP weights, which are not bundled")
        try:
            from tfft.prompting import ZeroShotEncoderClassifier
        except ImportError as error:
            return self.skip(candidate, f"tfft.prompting unavailable: {_first_line(error)}")
        class_names = list(self.train.class_names)
        verbalizer = self.label_words or {
            name: [name.replace("_", " ")] for name in class_names
        }
        kwargs = {"verbalizer": verbalizer, "class_names": class_names,
                  "batch_size": self.batch_size}
        if self.zero_shot_template is not None:
            kwargs["template"] = self.zero_shot_template
        classifier = ZeroShotEncoderClassifier(state.backbone, **kwargs)
        sample = list(self.val.x[:TIMING_EXAMPLES])
        classifier.scores(sample)  # traces, embeds the label prompts
        t1 = time.perf_counter()
        classifier.scores(sample)
        per_example = (time.perf_counter() - t1) / len(sample)
        reason = self.over_budget(per_example * len(self.val))
        if reason:
            return self.skip(candidate, f"{reason} ({1 / per_example:.1f} examples/s "
                             "measured)", estimate)
        t2 = time.perf_counter()
        predictions = classifier.scores(list(self.val.x)).argmax(axis=-1)
        infer = len(self.val) / max(time.perf_counter() - t2, 1e-9)
        template = self.zero_shot_template or "the default template"
        self.add_row(
            candidate, self.score(predictions), time.perf_counter() - t0,
            state.backbone.model.count_params(), infer,
            f"zero-shot: cosine similarity to label prompts ({template!s}; label words "
            f"{_words(verbalizer)}); no training", estimate, model=classifier,
        )

    def run_fine_tune(self, candidate, state, t0, estimate):
        import tfft
        from tfft.adapt.freeze import apply_freeze, parse_freeze
        from tfft.training.presets import compile_model

        if not isinstance(candidate.backbone_spec, str):
            return self.skip(candidate, "fine-tuning loads a fresh copy of the backbone, "
                             "which needs a spec string; a Backbone object would be "
                             "changed in place", estimate)
        if not state.backbone.block_names and candidate.strategy.startswith("top_k:"):
            return self.skip(candidate, "the backbone declares no blocks, so top_k cannot "
                             "choose layers")
        earlier_probe = state.probe is not None
        probe, reason = self.probe(candidate, state)
        if reason:
            return self.skip(candidate, f"its linear probe does not fit: {reason}", estimate)
        per_example = state.seconds_per_example
        passes = 4.0 if candidate.strategy == "full" else 2.0
        step_seconds = per_example * self.batch_size * passes
        eval_seconds = per_example * len(self.val)
        overhead = state.load_seconds + TRACE_OVERHEAD_SECONDS + eval_seconds
        left = self.remaining()
        allowed = left - overhead
        if self.fine_tune_seconds is not None:
            allowed = min(allowed, self.fine_tune_seconds)
        needed = MIN_FINE_TUNE_STEPS * step_seconds
        if self.fine_tune_seconds is not None and self.fine_tune_seconds < needed:
            return self.skip(
                candidate,
                f"fine_tune_seconds={self.fine_tune_seconds:g} allows fewer than "
                f"{MIN_FINE_TUNE_STEPS} steps at {step_seconds:.1f} s each (measured "
                f"{1 / per_example:.1f} examples/s forward)", estimate,
            )
        if allowed < needed:
            return self.skip(
                candidate,
                f"fine-tuning needs >= {overhead + needed:.0f} s (load, trace, "
                f"{MIN_FINE_TUNE_STEPS} steps at {step_seconds:.1f} s, val pass) but "
                f"{max(left, 0):.0f} s are left of the {self.budget:.0f} s budget",
                estimate,
            )
        steps_per_epoch = math.ceil(len(self.train) / self.batch_size)
        planned = min(MAX_FINE_TUNE_EPOCHS * steps_per_epoch,
                      max(MIN_FINE_TUNE_STEPS, int(allowed / step_seconds)))
        epochs = math.ceil(planned / steps_per_epoch)
        kwargs = dict(candidate.load_kwargs)
        if _is_text_spec(candidate.backbone_spec):
            kwargs.setdefault("sequence_length", self.sequence_length)
        # A fresh copy: the shared backbone keeps its pretrained weights for
        # the other candidates, and this one ends up trained.
        fresh = tfft.load_backbone(candidate.backbone_spec, **kwargs)
        model = tfft.build_model(fresh, task="multiclass", num_classes=self.num_classes,
                                 freeze="feature_extraction", compile=False)
        model.get_layer("head").set_weights(state.model.get_layer("head").get_weights())
        try:
            apply_freeze(model, parse_freeze(candidate.strategy))
        except ValueError as error:
            # Reported as the row's reason: the policy cannot be applied to
            # this backbone, and the rest of the bake-off goes on.
            return self.skip(candidate, f"freeze={candidate.strategy!r} cannot be applied to "
                             f"this backbone: {_first_line(error)}", estimate)
        family = fresh.info.family
        compile_model(model, preset="auto", task="multiclass", family=family,
                      total_steps=planned, num_classes=self.num_classes,
                      learning_rate=FINE_TUNE_LEARNING_RATE.get(family, 5e-5))
        from tfft.data import make_dataset

        train_ds = make_dataset(self.train, fresh, batch_size=self.batch_size, shuffle=True,
                                seed=self.seed)
        limit = _TimeLimit(allowed, planned)
        t_fit = time.perf_counter()
        model.fit(train_ds, epochs=epochs, callbacks=[limit], shuffle=False, verbose=0)
        fit_seconds = time.perf_counter() - t_fit
        t_eval = time.perf_counter()
        probs = model.predict(self.make_inputs(fresh)(self.val.x), verbose=0)
        infer = len(self.val) / max(time.perf_counter() - t_eval, 1e-9)
        self.add_row(
            candidate, self.score(np.argmax(probs, axis=-1)),
            time.perf_counter() - t0 + (probe["seconds"] if earlier_probe else 0.0),
            model.count_params(), infer,
            f"head from the linear probe, then {candidate.strategy} fine-tuning: "
            f"{limit.steps} steps of {self.batch_size} ({fit_seconds:.0f} s, stopped by "
            f"{limit.stopped_by}; planned {planned}), lr "
            f"{FINE_TUNE_LEARNING_RATE.get(family, 5e-5):g}; time includes the probe",
            estimate, model=model,
        )


def _fit_linear_head(model, train_f, train_y, val_f, num_classes, seed):
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


def _cache_hit(model, x, prep):
    import os

    from tfft.training import feature_cache

    key, _ = feature_cache.cache_key(model, x, prep)
    return os.path.exists(os.path.join(feature_cache.cache_root(), key, "features.npy"))


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


def _spec_text(candidate):
    spec = candidate.backbone_spec
    if spec is None:
        return None
    if isinstance(spec, str):
        from tfft.selection.candidates import resolve_spec

        return resolve_spec(spec)
    info = getattr(spec, "info", None)
    return info.spec if info is not None else getattr(spec, "name", str(spec))


def _round(value, digits=3):
    return None if value is None else round(float(value), digits)


def _words(verbalizer):
    if isinstance(verbalizer, dict):
        return {k: list(v) for k, v in verbalizer.items()}
    return verbalizer


def select(candidates, train, val, budget_seconds=600, metric="macro_f1", finalists=1,
           fine_tune_seconds=None, out_dir=None, sequence_length=128, batch_size=32,
           zero_shot_template=None, label_words=None, seed=0, verbose=True):
    """Runs an empirical bake-off of candidates within a time budget.

    Cheap candidates run first: TF-IDF + logistic regression, zero-shot
    prompts, and a linear probe (logistic regression copied into the model's
    softmax head) on each backbone's pooled features, computed once and kept
    in `tfft.training.feature_cache`. Then fine-tuning candidates (`SPEC:top_k:N`,
    `SPEC:full`) and the best `finalists` probed backbones get a short
    fine-tune (`top_k:2`) starting from their probe's head, stopped by time.
    Before each candidate its cost is estimated (from the catalog, then from
    a small timed batch) and it is skipped, with the reason, when it would
    not fit the time left. A candidate whose modality differs from the data,
    or whose weights cannot load here, is listed as skipped.

    Args:
        candidates: list of str or `Candidate`, or a comma-separated string:
            `"minilm:feature_extraction"`, `"minilm:top_k:2"`,
            `"minilm:zero_shot"`, `"tfidf_logreg"`,
            `"offline:efficientnet_lite0:feature_extraction"`, ...
        train: `tfft.data.LabeledData`. Raw strings or images, int labels.
        val: `tfft.data.LabeledData`. Scored with `metric`.
        budget_seconds: float. Wall-clock budget of the whole run.
            Defaults to 600.
        metric: str. One of `tfft.selection.metrics.METRICS`. Defaults to
            `"macro_f1"`.
        finalists: int. Probed backbones that also get a `top_k:2` fine-tune
            (0: none beyond explicit fine-tune candidates). Defaults to 1.
        fine_tune_seconds: float. Cap on each fine-tune's training time;
            defaults to the time left.
        out_dir: str. Where `leaderboard.csv`, `.json` and `.png` go (None:
            not saved).
        sequence_length: int. Tokens per text for text backbones. Defaults
            to 128.
        batch_size: int. Defaults to 32.
        zero_shot_template: str. Zero-shot prompt with `{label}`, e.g.
            `"This review is {label}."`. Defaults to the classifier's.
        label_words: dict. Zero-shot `{class_name: [words]}`; defaults to the
            class names.
        seed: int. Defaults to 0.
        verbose: bool. Print progress and the table. Defaults to True.

    Returns:
        A `Leaderboard`; `leaderboard.winner` is the best row (with
        `backbone_spec` and `freeze`), `leaderboard.winner_model` its trained
        predictor, `leaderboard.build_winner()` a fresh `build_model` of the
        best backbone row.

    Raises:
        ValueError: bad candidates or data, or a budget too small for even
            the cheapest candidate.

    Example:

    >>> data = tfft.data.load_bbc_news()
    >>> tr, va, _ = tfft.data.stratified_split(data.y, 0.3, 0.0)
    >>> board = tfft.selection.select(
    ...     ["minilm:feature_extraction", "tfidf_logreg"], data.take(tr), data.take(va),
    ...     budget_seconds=120, finalists=0)
    >>> board.winner.candidate
    """
    budget = _positive("budget_seconds", budget_seconds)
    fine_tune_seconds = _positive("fine_tune_seconds", fine_tune_seconds, allow_none=True)
    M.check_metric(metric)
    if isinstance(finalists, bool) or not isinstance(finalists, int) or finalists < 0:
        raise ValueError(f"finalists must be an int >= 0. Received: finalists={finalists!r}")
    _check_data(train, val)
    candidates = parse_candidates(candidates)
    run = _BakeOff(train, val, budget, metric, fine_tune_seconds, sequence_length,
                   batch_size, zero_shot_template, label_words, seed, verbose)
    estimates = {c.name: run.prior_estimate(c) for c in candidates}
    runnable = [c for c in candidates if c.modality in (None, run.modality)]
    known = [estimates[c.name] for c in runnable if estimates[c.name] is not None]
    if runnable and len(known) == len(runnable) and min(known) > budget:
        listing = ", ".join(f"{c.name} ~{estimates[c.name]:.0f} s" for c in runnable)
        raise ValueError(
            f"budget_seconds={budget:g} is too small for even one candidate on "
            f"{len(train)} train / {len(val)} val examples. Estimated costs: {listing}. "
            "Raise the budget, subsample the data, or add 'tfidf_logreg'."
        )
    order = {c.name: i for i, c in enumerate(candidates)}

    def by_cost(c):
        est = estimates[c.name]
        return (est is None, est or 0.0, order[c.name])

    first = sorted([c for c in candidates if not c.is_fine_tune], key=by_cost)
    for candidate in first:
        run.run(candidate, estimates[candidate.name])
    second = sorted([c for c in candidates if c.is_fine_tune], key=by_cost)
    covered = {c.spec_key for c in second}
    probed = sorted(
        [r for r in run.rows if r.ok and r.strategy == "feature_extraction"],
        key=Leaderboard._rank_key,
    )
    by_name = {c.name: c for c in candidates}
    for row in probed:
        if len([c for c in second if c.name.endswith("(finalist)")]) >= finalists:
            break
        source = by_name[row.candidate]
        if source.spec_key in covered or not isinstance(source.backbone_spec, str):
            continue
        state = run.states.get(source.spec_key)
        if state is None or not state.backbone.block_names:
            continue
        base = row.candidate.rsplit(":", 1)[0]
        second.append(Candidate(source.backbone_spec, "top_k:2",
                                name=f"{base}:top_k:2 (finalist)",
                                load_kwargs=dict(source.load_kwargs)))
        covered.add(source.spec_key)
    for candidate in second:
        estimate = estimates.get(candidate.name, run.prior_estimate(candidate))
        run.run(candidate, estimate)
    board = Leaderboard(run.rows, metric=metric, budget_seconds=budget,
                        elapsed_seconds=round(run.elapsed(), 3),
                        class_names=train.class_names, models=run.models)
    if out_dir:
        board.save(out_dir)
    if verbose:
        print(board.table(), flush=True)
    return board
