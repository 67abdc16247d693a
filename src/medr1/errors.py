"""The errors medr1 raises for bad input: each message names the knob, file, row or field at fault."""


class MedR1Error(Exception):
    """Base: a problem with what the user gave, explained in one line."""


class ConfigError(MedR1Error, ValueError):
    """A knob has a wrong name, type or value."""


class DataError(MedR1Error, ValueError):
    """The data cannot be used: names the file, row and field."""


class OutputDirError(MedR1Error, FileExistsError):
    """The output folder cannot take this run without losing another one."""


class ModelError(MedR1Error, RuntimeError):
    """The model cannot be loaded as asked: says which setting and why."""


class ExportError(MedR1Error, RuntimeError):
    """An export cannot be made here: says what is missing (disk space, llama.cpp, a token, ...)."""


class TrainingError(MedR1Error, RuntimeError):
    """A run's steps taken out of order, or training that went non-finite: one line says what to do."""
