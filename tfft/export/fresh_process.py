"""What a fresh process that checks an export imports: what a serving process has.

An export is checked by loading it in a new Python process, as a server would:
that process holds none of the exporting process's Python state.
"""

# The imports of a process that loads an export the way a serving process does:
# TensorFlow and the op libraries of tensorflow_text (the tokenizers' ops), without
# Keras. TensorFlow imports Keras at start-up only to register Keras optimizers for
# SavedModels that hold them, which an export does not, and importing tensorflow_text
# as a package imports Keras too; the two cost ~2-3 s of each verification's ~10 s
# here (2 CPU cores). If the op libraries cannot be loaded directly, the package is
# imported after all.
SERVING_IMPORTS = r"""
import glob, importlib.util, os, sys
sys.modules.setdefault("keras.src.optimizers", None)
import numpy as np
import tensorflow as tf
text = importlib.util.find_spec("tensorflow_text")
if text is not None:
    try:
        libraries = glob.glob(os.path.join(os.path.dirname(text.origin), "python", "ops", "_*.so"))
        if not libraries:
            raise ImportError("no op libraries in tensorflow_text")
        for library in sorted(libraries):
            tf.load_op_library(library)
    except Exception:
        if sys.modules.get("keras.src.optimizers", 0) is None:
            del sys.modules["keras.src.optimizers"]
        import tensorflow_text  # noqa: F401  registers the tokenizer ops
"""
