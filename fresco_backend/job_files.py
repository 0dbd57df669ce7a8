"""The local files a job's settings name, checked before anything is loaded or downloaded.

The command line (cli.py) calls ``check_job_files`` before it creates its job folder, the server
(server/warm_models.py, ``WarmModels.prepare``) before a job's downloads and model load: a job whose
LoRA or RAFT weights or Style Image cannot be used fails at once with the reason, not after minutes of loading.
"""
from __future__ import annotations

from fresco_contract.passes import RENDER_FLOW

from .config import JobConfig, require
from .download import ModelNotFoundError
from .flow import check_estimator
from .lora import lora_key
from .style import check_style_image


def check_job_files(config: JobConfig) -> None:
    """Raise ModelNotFoundError naming the file and what is wrong with it: a LoRA file that is missing
    or no regular file (``lora.lora_key``), flow weights that are not a full RAFT checkpoint
    (``flow.check_estimator``), or a Style Image that is no readable picture (``style.check_style_image``)."""
    lora_key(require(config).loras)
    check_style_image(config)
    try:
        if config.flow != RENDER_FLOW:  # the renderer's motion: nothing to load
            check_estimator(config.flow, config.flow_weights)
    except ValueError as exc:
        raise ModelNotFoundError(f"flow_weights: {exc}") from None
