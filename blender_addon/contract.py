"""Where the add-on finds the shared contract (``fresco_contract``).

In the built zip, ``build_addon.py`` puts a copy of the package inside the
add-on (``fresco_vse/fresco_contract``); in a checkout the add-on modules use
the top-level package. The rest of the add-on imports it from here only.
"""
try:
    from .fresco_contract import __version__, estimate, files, hubcache, keys, options, passes, progress, settings, wire
except ImportError:  # a checkout: blender_addon/ next to fresco_contract/
    from fresco_contract import __version__, estimate, files, hubcache, keys, options, passes, progress, settings, wire

__all__ = ["__version__", "estimate", "files", "hubcache", "keys", "options", "passes", "progress", "settings", "wire"]
