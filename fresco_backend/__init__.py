"""FRESCO video translation as a library: models, frames, control, translation.

Submodules import torch and diffusers on demand; importing the package itself is cheap.
"""
