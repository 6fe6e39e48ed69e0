"""zoo: a Lightning model zoo for language models that measure and approach the entropy of text."""

__version__ = "0.1.0"
