"""Cortex: a self-hostable server for the ODIN Cortex API."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the package is installed editable, so the OpenAPI document lives beside it).
ROOT = Path(__file__).resolve().parent.parent
