"""Export for serving: versioned SavedModels with preprocessing inside, LiteRT files."""

from tfft.export.detection import export_detection
from tfft.export.generate import (
    GENERATE_SIGNATURE,
    export_generate_model,
    generate_in_fresh_process,
    load_generate,
)
from tfft.export.saved_model import (
    ARRAY_SIGNATURE,
    METADATA_FILE,
    ExportError,
    encode_image,
    export_saved_model,
    list_versions,
    load_serving_outputs_in_fresh_process,
    next_version,
    output_names,
    read_metadata,
    verify_in_fresh_process,
)
from tfft.export.segmentation import export_segmentation
from tfft.export.tflite import run_tflite, to_tflite

__all__ = [
    "ARRAY_SIGNATURE",
    "GENERATE_SIGNATURE",
    "METADATA_FILE",
    "ExportError",
    "encode_image",
    "export_detection",
    "export_generate_model",
    "export_saved_model",
    "export_segmentation",
    "generate_in_fresh_process",
    "list_versions",
    "load_generate",
    "load_serving_outputs_in_fresh_process",
    "next_version",
    "output_names",
    "read_metadata",
    "run_tflite",
    "to_tflite",
    "verify_in_fresh_process",
]
