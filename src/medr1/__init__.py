"""medr1: fine-tune DeepSeek-R1-Distill-Llama-8B on medical chain-of-thought data.

Importing medr1 is light (no torch): the config and data checks run in seconds, before anything heavy.
"""

from medr1.config import Config, build_config
from medr1.errors import ConfigError, DataError, MedR1Error, ModelError, OutputDirError
from medr1.noise import silence_known_noise
from medr1.presets import PRESET_NAMES

silence_known_noise()  # before any heavy library is imported (medr1.noise says what and why)

__all__ = ["Config", "ConfigError", "DataError", "MedR1Error", "ModelError", "OutputDirError", "PRESET_NAMES",
           "build_config"]
__version__ = "0.1.0"
