"""TF Hub and TF2 SavedModel backbones for Keras 3: `HubLayer` and the `tfhub:` source.

`tensorflow_hub.KerasLayer` is a Keras 2 (tf_keras) layer: Keras 3 rejects it in
`keras.Sequential` and functional models. `keras.layers.TFSMLayer` is a Keras 3
layer but cannot fine-tune with Adam (its variable names keep the `:0` suffix,
which optimizer slot names reject). `HubLayer` loads the SavedModel with
`tf.saved_model.load`, tracks each restored `tf.Variable` as a `keras.Variable`
that shares its storage (with a clean name), and calls the restored function
with `training=training and self.trainable`, so frozen BatchNorm and dropout stay
in inference mode.

Handles are https URLs (tfhub.dev / Kaggle Models, resolved by
`tensorflow_hub.resolve`, imported only then, into tfft's cache folder), `gs://`
paths, or local SavedModel directories, which never touch the network. Plain
`http://` is refused: anyone on the path could swap the graph tfft would run.

A handle named in a saved config (a `.keras` file, `HubLayer.from_config`) is
the file author's choice, not the user's: it loads when it is a local
directory or matches a prefix the user allowed with `allow_hub_handles` or the
`TFFT_ALLOWED_HUB_HANDLES` environment variable.
"""

import contextlib
import contextvars
import os
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote, urlparse

import keras
import tensorflow as tf
from absl import flags

from tfft._compat import track_layer_variable
from tfft.assets import cache_dir
from tfft.utils.network import require_network

# http:// is listed so that such a handle is recognised (and refused), not
# mistaken for a missing local directory.
URL_PREFIXES = ("https://", "http://", "gs://")
ALLOWED_HANDLES_ENV = "TFFT_ALLOWED_HUB_HANDLES"
TFHUB_CACHE_ENV = "TFHUB_CACHE_DIR"
_DEFAULT_PORTS = {"https": 443, "gs": None}
# Prefixes allowed by the `allow_hub_handles` blocks around the current code.
_ALLOWED_PREFIXES = contextvars.ContextVar("tfft_allowed_hub_handles", default=())
# Ops that XLA cannot compile: a model using them runs with jit_compile off.
_NON_XLA_OP_MARKERS = ("HashTable", "LookupTable", "String", "Regex", "Unicode", "Substr")
_LOCAL_HINT = (
    "tfhub:/path/to/saved_model_dir (download the model once, e.g. from "
    "https://www.kaggle.com/models, and untar it; the folder holds saved_model.pb)."
)


def is_url(handle):
    return isinstance(handle, str) and handle.lower().startswith(URL_PREFIXES)


def _refuse_http(handle):
    if isinstance(handle, str) and handle.lower().startswith("http://"):
        raise ValueError(
            "Plain http:// TF Hub handles are refused: the download is not encrypted, so "
            "anyone on the network path could swap the SavedModel graph that would be "
            "loaded and run. Use the https:// URL "
            f"({'https://' + handle[len('http://'):]!r}) or a local SavedModel directory. "
            f"Received: handle={handle!r}"
        )


def _url_parts(url):
    """(scheme, host, port, path segments) of an https:// or gs:// URL.

    Segments are compared percent-decoded, so `%2e%2e` is `..` and `%2F` splits.
    Raises ValueError for other schemes, a missing host, a bad port, and `.` or
    `..` segments (a server resolves them, so they could climb out of a prefix).
    """
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.hostname:
        raise ValueError(
            "needs an https:// or gs:// scheme (http:// is never allowed) and a host "
            "(or bucket)"
        )
    try:
        port = parsed.port or _DEFAULT_PORTS[scheme]
    except ValueError as error:
        raise ValueError(f"has an invalid port ({error})") from None
    path = unquote(parsed.path)
    segments = [segment for segment in path.split("/") if segment]
    if "\\" in path or any(segment in (".", "..") for segment in segments):
        raise ValueError("has '.', '..' or backslash path segments")
    return scheme, parsed.hostname, port, segments


def _check_prefixes(prefixes, where):
    """The prefixes as a tuple of strings, each a valid https:// or gs:// prefix."""
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if not isinstance(prefixes, Iterable):
        raise TypeError(
            "Expected allowed TF Hub handle prefixes as a list of strings. "
            f"Received: prefixes={prefixes!r}"
        )
    prefixes = tuple(prefixes)
    for prefix in prefixes:
        if not isinstance(prefix, str):
            raise TypeError(
                "Expected allowed TF Hub handle prefixes as a list of strings. "
                f"Received: {prefix!r} of type {type(prefix).__name__} in prefixes={prefixes!r}"
            )
        try:
            _url_parts(prefix)
        except ValueError as error:
            raise ValueError(
                f"Invalid allowed TF Hub handle prefix in {where}: it {error}. Expected "
                "https://host/folder or gs://bucket/folder (a handle is allowed when its "
                "host matches and its path starts with the prefix's whole folders). "
                f"Received: {prefix!r}"
            ) from None
    return prefixes


def _env_prefixes():
    raw = os.environ.get(ALLOWED_HANDLES_ENV, "")
    prefixes = [prefix.strip() for prefix in raw.split(",") if prefix.strip()]
    return _check_prefixes(prefixes, f"the {ALLOWED_HANDLES_ENV} environment variable")


@contextlib.contextmanager
def allow_hub_handles(prefixes: str | Iterable[str]) -> Iterator[None]:
    """Lets saved configs loaded inside the block name these remote TF Hub handles.

    A `.keras` file names its `HubLayer`'s handle, and loading the file would
    download and run that SavedModel's graph. Inside this block, a handle from a
    config loads when it matches one of `prefixes` (or a prefix in the
    comma-separated `TFFT_ALLOWED_HUB_HANDLES` environment variable); local
    SavedModel directories always load. A handle matches a prefix when scheme,
    host and port are equal and its path starts with the prefix's whole
    folders: `https://tfhub.dev/google` allows `https://tfhub.dev/google/x/1`,
    not `https://tfhub.dev/googlex/1` nor `https://tfhub.dev.example/...`.
    `http://` is never allowed. Blocks nest; the allowance ends with the block.

    Args:
        prefixes: str or list of str. `https://host/folder` or
            `gs://bucket/folder` prefixes (a whole handle is a prefix too).

    Example:

    >>> with tfft.layers.allow_hub_handles(["https://tfhub.dev/google/"]):
    ...     model = keras.saving.load_model("classifier.keras")
    """
    prefixes = _check_prefixes(prefixes, "allow_hub_handles")
    token = _ALLOWED_PREFIXES.set(_ALLOWED_PREFIXES.get() + prefixes)
    try:
        yield
    finally:
        _ALLOWED_PREFIXES.reset(token)


def check_config_handle(handle):
    """Raises ValueError unless a handle named in a saved config may load.

    Local paths may (they read the user's own disk, never the network); remote
    handles only when an allowed prefix matches; `http://` never.

    Args:
        handle: the `handle` entry of a `HubLayer` config.
    """
    if not is_url(handle):
        if isinstance(handle, str) and "://" in handle:
            # Another file-system scheme (s3://, hdfs://, ram:// ...) would reach
            # past the local disk through TensorFlow's file systems.
            raise ValueError(
                "Refusing the TF Hub handle in a saved config: only local SavedModel "
                "directories and allowed https:// or gs:// handles load from a config. "
                f"Received: handle={handle!r}"
            )
        return
    _refuse_http(handle)
    allowed = _ALLOWED_PREFIXES.get() + _env_prefixes()
    how = (
        "A remote handle named in a saved config (a .keras file, or "
        "HubLayer.from_config) loads only when you allow it, since loading downloads "
        "and runs that SavedModel's graph. If you trust it, wrap the load in "
        f"`with tfft.layers.allow_hub_handles([{handle!r}]):` or set the environment "
        f"variable {ALLOWED_HANDLES_ENV}={handle} (comma-separated https:// or gs:// "
        "prefixes). Local SavedModel directories load without this."
    )
    try:
        parts = _url_parts(handle)
    except ValueError as error:
        raise ValueError(
            f"Refusing the TF Hub handle in a saved config: it {error}, which no "
            f"allowed prefix can vouch for. Received: handle={handle!r}"
        ) from None
    for prefix in allowed:
        scheme, host, port, segments = _url_parts(prefix)
        if (scheme, host, port) == parts[:3] and parts[3][: len(segments)] == segments:
            return
    raise ValueError(
        f"Refusing the TF Hub handle in a saved config: no allowed prefix matches it. "
        f"{how} Received: handle={handle!r}"
    )


@contextlib.contextmanager
def _tfhub_cache():
    """Points TF Hub's download cache at tfft's cache folder for one resolve.

    TF Hub's default is the shared `/tmp/tfhub_modules`, where another user of
    the machine could plant or read models. A `TFHUB_CACHE_DIR` or
    `--tfhub_cache_dir` the user set wins; otherwise the variable is set for
    the call only.
    """
    flag = flags.FLAGS["tfhub_cache_dir"].value if "tfhub_cache_dir" in flags.FLAGS else None
    if os.environ.get(TFHUB_CACHE_ENV) or flag:
        yield
        return
    os.environ[TFHUB_CACHE_ENV] = cache_dir("tfhub")
    try:
        yield
    finally:
        os.environ.pop(TFHUB_CACHE_ENV, None)


def resolve_handle(handle):
    """Returns the local SavedModel directory for a handle.

    URLs are checked for network access first (so offline runs fail in seconds)
    and then downloaded by `tensorflow_hub.resolve` into tfft's cache folder
    (`tfft.assets.cache_dir("tfhub")`, under `TFFT_CACHE_DIR`) unless
    `TFHUB_CACHE_DIR` names another. Local paths are checked for a
    `saved_model.pb` and never touch the network. `http://` is refused.

    Args:
        handle: str or os.PathLike. An https URL, a gs:// path or a local
            SavedModel directory.
    """
    if isinstance(handle, os.PathLike):
        handle = os.fspath(handle)
    if not isinstance(handle, str) or not handle.strip():
        raise TypeError(
            "A TF Hub handle must be a non-empty string: an https URL or a local "
            f"SavedModel directory. Received: handle={handle!r}"
        )
    if is_url(handle):
        _refuse_http(handle)
        require_network("tfhub", f"tfhub:{handle}", _LOCAL_HINT, url=handle)
        try:
            import tensorflow_hub
        except ImportError as error:
            raise ImportError(
                f"Downloading {handle!r} needs tfft's hub extra (tensorflow-hub and "
                "tf-keras, pinned to your TensorFlow version): `pip install \"tfft[hub]\"`. "
                "A local SavedModel directory loads without it. "
                f"Original error: {error}"
            ) from None
        with _tfhub_cache():
            return tensorflow_hub.resolve(handle)
    path = os.path.expanduser(handle)
    if not os.path.exists(path):
        raise ValueError(
            "The TF Hub handle is neither a URL nor an existing directory. Expected "
            "an https URL (e.g. https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/"
            f"feature_vector/5) or a local SavedModel directory. Received: handle={handle!r}"
        )
    if not os.path.isdir(path) or not any(
        os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")
    ):
        found = sorted(os.listdir(path))[:10] if os.path.isdir(path) else "a file"
        raise ValueError(
            f"{handle!r} is not a SavedModel directory: expected saved_model.pb (and a "
            f"variables/ folder) inside it. Found: {found}"
        )
    return path


def _read_saved_model_proto(path):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.exists(pb):
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), proto)
    return proto


def _is_tf1_saved_model(path):
    """True for a TF1 SavedModel (no object graph: signatures only, no __call__)."""
    proto = _read_saved_model_proto(path)
    return all(len(mg.object_graph_def.nodes) == 0 for mg in proto.meta_graphs)


def _uses_non_xla_ops(concrete_functions):
    """True if the functions (with the functions they call) use ops XLA cannot compile."""
    for concrete in concrete_functions:
        graph_def = concrete.graph.as_graph_def()
        ops = {node.op for node in graph_def.node}
        for fn in graph_def.library.function:
            ops.update(node.op for node in fn.node_def)
        if any(marker in op for op in ops for marker in _NON_XLA_OP_MARKERS):
            return True
    return False


def _clean_name(name):
    """A Keras-valid variable name: no `:0` suffix, no slashes."""
    name = re.sub(r":\d+$", "", name)
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "variable"


def _is_floating(dtype):
    return tf.as_dtype(dtype).is_floating


@keras.saving.register_keras_serializable(package="tfft")
class HubLayer(keras.layers.Layer):
    """A Keras 3 layer that runs (and fine-tunes) a TF2 SavedModel or TF Hub model.

    Works in `keras.Sequential` and functional models, fine-tunes with any Keras
    optimizer (Adam, AdamW ...) when `trainable=True`, saves to `.keras` files
    (the current variable values go into the file, so a fine-tuned layer reloads
    as tuned; the handle must still resolve when loading) and exports with
    `tf.saved_model.save` / `model.export`.

    The restored function receives `training` only when the layer is trainable,
    so BatchNorm statistics and dropout stay in inference mode while frozen.
    Regularization losses the SavedModel publishes (`obj.regularization_losses`)
    are added with `add_loss` while the layer is trainable.

    Models whose graph uses string ops or lookup tables (e.g. text models that
    tokenize inside) set `supports_jit = False`, so `compile(jit_compile="auto")`
    does not try XLA, which cannot compile them.

    The layer computes in float32 by default (a SavedModel's graph has fixed
    dtypes): under a `mixed_float16`/`mixed_bfloat16` global policy its inputs
    are cast to what the SavedModel expects and its float outputs come back in the
    layer's compute dtype (float32), and the next layer casts them down.

    Args:
        handle: str. An https URL (tfhub.dev / Kaggle Models, needs
            `tensorflow-hub` and network access) or a local SavedModel directory.
        trainable: bool. Fine-tune the SavedModel's variables. Needs a TF2
            SavedModel with a restored `__call__`; TF1 models and signatures are
            inference only. Defaults to `False`.
        signature: str. Call this named signature (e.g. `"serving_default"`)
            instead of the restored `__call__`. Required for TF1 models and for
            SavedModels that only have signatures. Defaults to `None`.
        output_key: str. Return only this entry of a dict output (e.g.
            `"pooled_output"`). Defaults to `None`.
        signature_outputs_as_dict: bool. With a signature, return the whole output
            dict. Without it (and without `output_key`) a signature with a single
            output returns that tensor. Defaults to `False`.
        arguments: dict. Extra keyword arguments for every call of the restored
            function (e.g. `{"batch_norm_momentum": 0.99}`). Defaults to `None`.
        tags: list of str. MetaGraph tags to load, for TF1 SavedModels holding
            several MetaGraphs. Defaults to `None`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> layer = tfft.HubLayer(
    ...     "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
    ...     trainable=True)  # or a local SavedModel directory
    >>> model = keras.Sequential([keras.Input((224, 224, 3)), layer,
    ...                           keras.layers.Dense(5)])
    >>> model.compile("adamw", "sparse_categorical_crossentropy")
    """

    def __init__(
        self,
        handle,
        trainable=False,
        signature=None,
        output_key=None,
        signature_outputs_as_dict=False,
        arguments=None,
        tags=None,
        **kwargs,
    ):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        if not isinstance(trainable, bool):
            raise TypeError(
                f"Expected `trainable` to be a bool. Received: trainable={trainable!r}"
            )
        for arg_name, value in (("signature", signature), ("output_key", output_key)):
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"Expected `{arg_name}` to be a string or None. "
                    f"Received: {arg_name}={value!r}"
                )
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(
                f"Expected `arguments` to be a dict or None. Received: arguments={arguments!r}"
            )
        if signature_outputs_as_dict and output_key is not None:
            raise ValueError(
                "Pass either `output_key` (one output) or `signature_outputs_as_dict=True` "
                f"(all outputs), not both. Received: output_key={output_key!r}, "
                "signature_outputs_as_dict=True"
            )
        if signature_outputs_as_dict and signature is None:
            raise ValueError(
                "`signature_outputs_as_dict=True` applies to signatures only; pass "
                "`signature=` too (a restored `__call__` returns its dict as is). "
                "Received: signature=None"
            )
        # Track the variables while trainable so each lands in the right store;
        # the requested state is applied (and validated) at the end.
        super().__init__(trainable=True, **kwargs)
        self.handle = os.fspath(handle) if isinstance(handle, os.PathLike) else handle
        self.signature = signature
        self.output_key = output_key
        self.signature_outputs_as_dict = bool(signature_outputs_as_dict)
        self.arguments = dict(arguments or {})
        self.tags = list(tags) if tags is not None else None
        self._finetune_error = None

        path = resolve_handle(self.handle)
        self.resolved_path = path
        self.is_tf1 = _is_tf1_saved_model(path)
        loaded = tf.saved_model.load(path, tags=self.tags)
        # Tracked attribute: tf.saved_model.save of a model holding this layer
        # then also saves the SavedModel's tables and assets.
        self._loaded = loaded
        self._setup_callable(loaded)
        self._input_spec_structure = self._find_input_spec()
        if _uses_non_xla_ops(self._concrete_functions()) or any(
            s.dtype == tf.string for s in tf.nest.flatten(self._input_spec_structure)
            if isinstance(s, tf.TensorSpec)
        ):
            self.supports_jit = False
        self._validate_output_key()

        self._regularization_losses = list(getattr(loaded, "regularization_losses", None) or [])
        self._track_saved_model_variables(loaded)
        self.built = True
        self._check_trainable(trainable)
        self.trainable = trainable

    # -- loading --------------------------------------------------------------

    def _setup_callable(self, loaded):
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        has_call = callable(loaded) and not self.is_tf1
        if self.signature is not None:
            if self.signature not in signatures:
                raise ValueError(
                    f"Unknown signature. Expected one of {sorted(signatures)} in "
                    f"{self.handle!r}. Received: signature={self.signature!r}"
                )
            self._func = signatures[self.signature]
            self._finetune_error = (
                "calling a SavedModel signature (signatures have no training mode and "
                "TF Hub only supports fine-tuning through the restored __call__)"
            )
        elif has_call:
            self._func = loaded.__call__
        else:
            raise ValueError(
                f"{self.handle!r} has no restored __call__ (a TF1 SavedModel, or one saved "
                f"with signatures only). Pass signature= one of {sorted(signatures)} to "
                "run it for inference. Received: signature=None"
            )
        if self.is_tf1:
            self._finetune_error = (
                "the SavedModel is in TF1 format (written by a tf.compat.v1 Session); "
                "only TF2 SavedModels with a restored __call__ can be fine-tuned"
            )
        self._has_training_arg = self.signature is None and self._accepts_training(self._func)

    @staticmethod
    def _accepts_training(func):
        function_type = getattr(func, "function_type", None)
        if function_type is not None:
            return "training" in function_type.parameters
        spec = getattr(func, "function_spec", None)
        return spec is not None and "training" in spec.arg_names

    def _concrete_functions(self):
        if self.signature is not None:
            return [self._func]
        return list(getattr(self._func, "concrete_functions", []) or [])

    def _find_input_spec(self):
        """The (possibly nested) TensorSpec structure of the model's inputs, or None."""
        for concrete in self._concrete_functions():
            args, kwargs = concrete.structured_input_signature
            if self.signature is not None:
                return dict(kwargs)
            if args:
                return args[0]
        return None

    @property
    def input_structure(self):
        """The SavedModel function's input specs (a `tf.TensorSpec` or a dict of them)."""
        return self._input_spec_structure

    def output_structure(self):
        """The SavedModel function's output structure (specs, possibly a dict)."""
        for concrete in self._concrete_functions():
            return concrete.structured_outputs
        return None

    def _validate_output_key(self):
        outputs = self.output_structure()
        if self.output_key is None:
            if (
                self.signature is not None
                and not self.signature_outputs_as_dict
                and isinstance(outputs, dict)
                and len(outputs) > 1
            ):
                raise ValueError(
                    f"The signature {self.signature!r} has several outputs. Pass "
                    f"output_key= one of {sorted(outputs)} or signature_outputs_as_dict=True. "
                    "Received: output_key=None"
                )
            return
        if outputs is None:
            return
        if not isinstance(outputs, dict):
            raise ValueError(
                f"output_key applies to models that return a dict, but {self.handle!r} "
                f"returns a single tensor. Received: output_key={self.output_key!r}"
            )
        if self.output_key not in outputs:
            raise ValueError(
                f"Unknown output_key. Expected one of {sorted(outputs)}. "
                f"Received: output_key={self.output_key!r}"
            )

    def _saved_model_variables(self, loaded):
        """(variables, trainable ids), following the TF Hub reusable-SavedModel API
        (`obj.variables`, `obj.trainable_variables`) and else the variables the
        called function captures."""
        if hasattr(loaded, "variables") and not self.is_tf1:
            variables = list(loaded.variables)
            trainable = getattr(loaded, "trainable_variables", None)
            trainable_ids = (
                {id(v) for v in trainable} if trainable is not None
                else {id(v) for v in variables if v.trainable}
            )
        else:
            variables, seen = [], set()
            for concrete in self._concrete_functions():
                for v in concrete.variables:
                    if id(v) not in seen:
                        seen.add(id(v))
                        variables.append(v)
            trainable_ids = {id(v) for v in variables if v.trainable}
        return variables, trainable_ids

    def _track_saved_model_variables(self, loaded):
        variables, trainable_ids = self._saved_model_variables(loaded)
        # The layer name prefixes the paths (`hub_layer/dense_kernel`), which
        # path-based freezing and per-layer learning rates match on.
        with keras.name_scope(self.name, caller=self):
            for v in variables:
                # Sharing storage: optimizer updates change the SavedModel's own
                # variables, which its restored functions read.
                wrapped = keras.Variable(
                    initializer=v, shape=v.shape, dtype=v.dtype.name,
                    trainable=id(v) in trainable_ids, name=_clean_name(v.name),
                )
                track_layer_variable(self, wrapped)

    # -- trainable ------------------------------------------------------------

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        self._check_trainable(value)
        keras.layers.Layer.trainable.fset(self, value)

    def _check_trainable(self, value):
        if value and getattr(self, "_finetune_error", None):
            raise ValueError(
                f"HubLayer {self.name!r} cannot be fine-tuned: {self._finetune_error}. "
                f"Keep it frozen (trainable=False). Received: trainable={value!r} for "
                f"handle={self.handle!r}"
            )

    # -- calling --------------------------------------------------------------

    def build(self, input_shape=None):
        self.built = True

    def _prepare_inputs(self, inputs):
        spec = self._input_spec_structure
        if isinstance(spec, dict):
            if not isinstance(inputs, dict):
                if len(spec) == 1:
                    inputs = {next(iter(spec)): inputs}
                else:
                    raise ValueError(
                        f"{self.handle!r} expects a dict of inputs with keys {sorted(spec)}. "
                        f"Received: a {type(inputs).__name__}"
                    )
            missing = sorted(set(spec) - set(inputs))
            if missing:
                raise ValueError(
                    f"Missing inputs for {self.handle!r}. Expected keys {sorted(spec)}. "
                    f"Received keys: {sorted(inputs)}"
                )
            inputs = {key: inputs[key] for key in spec}
        if spec is None:
            return inputs
        try:
            tf.nest.assert_same_structure(spec, inputs, expand_composites=False)
        except (ValueError, TypeError):
            return inputs
        return tf.nest.map_structure(self._cast_to_spec, inputs, spec)

    @staticmethod
    def _cast_to_spec(x, spec):
        if not isinstance(spec, tf.TensorSpec):
            return x
        x = tf.convert_to_tensor(x)
        if x.dtype == spec.dtype or tf.string in (x.dtype, spec.dtype):
            return x
        return tf.cast(x, spec.dtype)

    def _cast_outputs(self, outputs):
        def cast(x):
            if isinstance(x, tf.Tensor) and _is_floating(x.dtype):
                return tf.cast(x, self.compute_dtype)
            return x

        return tf.nest.map_structure(cast, outputs)

    def call(self, inputs, training=None):
        inputs = self._prepare_inputs(inputs)
        if self.signature is not None:
            outputs = self._func(**inputs, **self.arguments)
        else:
            kwargs = dict(self.arguments)
            if self._has_training_arg:
                kwargs["training"] = bool(training) and self.trainable
            outputs = self._func(inputs, **kwargs)
        if self.trainable:
            for loss_fn in self._regularization_losses:
                self.add_loss(tf.cast(loss_fn(), "float32"))
        outputs = self._select_outputs(outputs)
        return self._cast_outputs(outputs)

    def _select_outputs(self, outputs):
        if not isinstance(outputs, dict):
            return outputs
        if self.output_key is not None:
            return outputs[self.output_key]
        if self.signature is not None and not self.signature_outputs_as_dict:
            return next(iter(outputs.values()))
        return dict(outputs)

    # -- config ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config):
        """Rebuilds a layer from `get_config()`, e.g. while loading a `.keras` file.

        The handle comes from the file, not from the user, so it loads only when
        it is a local SavedModel directory or matches a prefix allowed with
        `tfft.layers.allow_hub_handles` or `TFFT_ALLOWED_HUB_HANDLES`; `http://`
        never does. The check runs before any network probe or SavedModel load.
        """
        check_config_handle(config.get("handle"))
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            handle=self.handle,
            signature=self.signature,
            output_key=self.output_key,
            signature_outputs_as_dict=self.signature_outputs_as_dict,
            arguments=dict(self.arguments),
            tags=self.tags,
        )
        return config
