"""Export for serving: versioned SavedModels with preprocessing inside."""

from tfft.export.saved_model import (
    METADATA_FILE,
    ExportError,
    export,
    load_serving_outputs_in_fresh_process,
    next_version,
    verify_in_fresh_process,
)

__all__ = [
    "METADATA_FILE",
    "ExportError",
    "export",
    "load_serving_outputs_in_fresh_process",
    "next_version",
    "verify_in_fresh_process",
]
