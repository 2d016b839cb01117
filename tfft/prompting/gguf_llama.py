"""Moved to `tfft.backbones.gguf_llama` (models below prompting load SmolLM2 too).

This name stays an alias of that module, so `tfft.prompting.gguf_llama`
(and patching its functions in tests) keeps working.
"""

import sys

from tfft.backbones import gguf_llama

sys.modules[__name__] = gguf_llama
