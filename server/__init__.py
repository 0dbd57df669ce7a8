"""FRESCO backend server: HTTP API, job queue and model cache around ``fresco_backend``.

Run with ``python -m server --port 0 --model M --controlnet C``; see ``server/__main__.py``.
Never imports bpy.
"""
from blender_addon import bl_info

__version__ = ".".join(str(v) for v in bl_info["version"])
