"""FRESCO backend server: HTTP API, job queue and model cache around ``fresco_backend``.

Run with ``python -m server --port 0 --model M --controlnet C``; see ``server/__main__.py``.
Never imports bpy.
"""
from fresco_contract import __version__

__all__ = ["__version__"]
