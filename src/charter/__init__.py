"""charter: align a language model to a written constitution with AI feedback."""

__version__ = "0.1.0"
