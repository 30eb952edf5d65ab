"""Cortex: a self-hostable server for the ODIN Cortex API."""

import warnings
from pathlib import Path

# Connexion imports starlette.testclient at import time, which warns about httpx; Cortex never uses it.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

__version__ = "0.1.0"

#: Repository root (the package is installed editable, so the OpenAPI document lives beside it).
ROOT = Path(__file__).resolve().parent.parent
