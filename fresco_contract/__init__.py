"""The contract between the add-on, the server and the backend.

``settings`` (the one job-settings schema), ``wire`` (the one wire format and its typed events),
``options`` (the backend's options, once), ``progress`` (the one Progress and Cancelled), ``files``
(the one atomic writer and the link-free reader), ``hubcache`` (the default models and what the hub
cache holds of them), ``estimate`` (the key and batch planner; a job's working size and cost before it
runs), plus the product's version. Standard library only and importing nothing of the project: the
bottom of the import graph. ``build_addon.py`` copies this package
into the add-on zip, so Blender's Python and the installed backend share it.
"""

__version__ = "0.1.0"
