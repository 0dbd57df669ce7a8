"""The annotator networks of ControlNet 1.1's preprocessors, laid out so their released weights load.

``hed.py``: soft edges (lllyasviel/Annotators ``ControlNetHED.pth``); ``lineart.py``: line drawings
(``sk_model.pth``). Depth is transformers' ``DPTForDepthEstimation`` (``fresco_backend/annotators.py``).
"""
