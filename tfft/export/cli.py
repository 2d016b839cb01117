"""`tfft export`: a `.keras` model saved by tfft -> a versioned serving SavedModel.

    tfft export --model runs/x/model.keras --out saved_models/bbc_news \\
        --backbone minilm --sequence-length 128 --class-names business,entertainment,...

A `tfft.Task` saved as `.keras` holds its preprocessor (tokenizer or image
normalisation); for other models it is rebuilt from `--backbone` (the spec the
model was built from), which also overrides a Task's. Class names come from
`--class-names`, else from a metadata file beside the model
(`tfft_metadata.json`, or `NAME.json` for `NAME.keras`) or from the latest
version already exported under `--out`.
"""

import json
import os
import sys

EXIT_USAGE = 2


def add_parser(subparsers):
    """Registers `tfft export` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "export",
        help="export a .keras model as a versioned SavedModel that takes raw inputs",
        description=(
            "Export a .keras model saved by tfft as saved_models/NAME/<version>/ with "
            "the preprocessing inside the graph: serving_default takes raw strings "
            "(text) or encoded image bytes (images; serving_arrays takes uint8 arrays) "
            "and returns probabilities, class_ids and class_names."
        ),
    )
    p.add_argument("--model", required=True, help="path to a .keras model saved by tfft")
    p.add_argument("--out", required=True,
                   help="model directory, e.g. saved_models/NAME (the version goes below)")
    p.add_argument("--backbone",
                   help="backbone spec the model was built from, to rebuild its "
                        "preprocessor (e.g. minilm, keras_app:MobileNetV2)")
    p.add_argument("--sequence-length", type=int,
                   help="tokens per example for text backbones (default 128)")
    p.add_argument("--image-size", type=int,
                   help="input size for image backbones (default: the model's input size)")
    p.add_argument("--class-names",
                   help="comma-separated class names (default: from metadata beside the "
                        "model or the latest export under --out)")
    p.add_argument("--task", choices=["binary", "multiclass", "multilabel", "regression"],
                   help="default: the task of the model's head")
    p.add_argument("--version", type=int, help="version number (default: the next one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the reload-in-a-fresh-process check")
    p.set_defaults(func=run_export)
    return p


class _UsageError(ValueError):
    pass


def _class_names_from_metadata(model_path, out):
    stem, _ = os.path.splitext(model_path)
    candidates = [os.path.join(os.path.dirname(os.path.abspath(model_path)),
                               "tfft_metadata.json"), stem + ".json"]
    from tfft.export.saved_model import METADATA_FILE, list_versions

    versions = list_versions(out)
    if versions:
        candidates.append(os.path.join(out, str(versions[-1]), METADATA_FILE))
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as f:
                try:
                    names = json.load(f).get("class_names")
                except (ValueError, AttributeError):
                    continue
            if names:
                return [str(n) for n in names], path
    return None, candidates


def preprocessor_for_spec(spec, sequence_length=None, image_size=None):
    """Rebuilds the preprocessor of the backbone `spec` without its weights when possible."""
    from tfft.backbones import load_backbone, parse_spec

    source, name = parse_spec(spec)
    if source == "keras_hub":
        from tfft.backbones.keras_hub import preprocessor_for

        return preprocessor_for(name, sequence_length=sequence_length, image_size=image_size)
    if source == "keras_app":
        from tfft.backbones.applications import preprocessor_for

        return preprocessor_for(name, image_size), "image"
    kwargs = {}
    if sequence_length:
        kwargs["sequence_length"] = sequence_length
    backbone = load_backbone(spec, **kwargs)
    return backbone.preprocessor, backbone.modality


def _modality_of(model):
    inputs = model.inputs
    if len(inputs) == 1 and len(inputs[0].shape) == 4:
        return "image"
    return "text"


def run_export(args):
    import keras

    import tfft.models  # noqa: F401  registers Task and tfft's layers for loading
    from tfft.export.saved_model import export_saved_model

    try:
        if not args.model.endswith(".keras") or not os.path.isfile(args.model):
            raise _UsageError(
                f"--model must be an existing .keras file saved by tfft. Received: "
                f"--model {args.model!r}"
            )
        if args.version is not None and args.version < 1:
            raise _UsageError(f"--version must be a positive integer. Received: {args.version}")
        out = os.path.abspath(args.out)
        if args.class_names:
            class_names = [c.strip() for c in args.class_names.split(",") if c.strip()]
        else:
            class_names, looked = _class_names_from_metadata(args.model, out)
            if class_names is None and args.task not in ("regression", "multilabel"):
                raise _UsageError(
                    "No class names: pass --class-names a,b,c (one per model output) or put "
                    f"a metadata file with \"class_names\" at one of {looked}."
                )
        model = keras.saving.load_model(args.model, compile=False)
        modality = _modality_of(model)
        preprocessor = None
        if args.backbone:
            image_size = args.image_size or (
                tuple(model.inputs[0].shape[1:3]) if modality == "image" else None)
            preprocessor, modality = preprocessor_for_spec(
                args.backbone, args.sequence_length, image_size)
        elif getattr(model, "preprocessor", None) is not None:
            # A tfft.Task saves its preprocessor with it.
            preprocessor = model.preprocessor
            info = getattr(model, "backbone_info", None)
            modality = info.modality if info is not None else modality
        elif modality == "text":
            raise _UsageError(
                "A text model needs its tokenizer: pass --backbone SPEC (the backbone it "
                "was built from, e.g. --backbone minilm --sequence-length 128)."
            )
        path = export_saved_model(
            model, out, preprocessor=preprocessor, class_names=class_names, task=args.task,
            modality=modality, version=args.version, overwrite=args.overwrite,
            verify=not args.no_verify,
            image_size=tuple(model.inputs[0].shape[1:3]) if modality == "image" else None,
            metadata={"source_model": os.path.abspath(args.model),
                      "backbone_spec": args.backbone},
        )
    except (_UsageError, ValueError, TypeError, FileExistsError) as error:
        print(f"tfft export: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"export_path": path}))
    return 0
