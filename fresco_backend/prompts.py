"""A strip's prompt over time: the text embeddings of each frame of a job (``Sampling.prompt_schedule``).

Frame f takes the prompt in effect at f: the strip's ``prompt`` until the first change, then each change's
prompt from its frame on. A change at frame F with a blend of N frames (``prompt_blend``) starts N frames
before F: frame F - N + k - 1 (k = 1..N) takes k / (N + 1) of the new prompt's embeddings and the rest of
whatever was in effect there (a change closer than N frames to the previous one thus blends from that blend's
mixture); frame F - N - 1 and those before it take none of it, F and those after it all of it. N = 0 changes
at F at once. The embeddings mix linearly (CLIP's last hidden states, as SD conditions on them); the negative
prompt is the same for every frame. Each distinct prompt is encoded once per job.

Without a schedule a job's embeddings are ``denoise.encode_prompt``'s, one frame's for every batch, as they
always were (``job_embeddings``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .config import Sampling
from .denoise import encode_prompt

Embeddings = Callable[[Sequence[int]], torch.Tensor]  # a batch's frame indices -> its embeddings for denoise_batch


def change_weight(change: int, blend: int, frame: int) -> float:
    """How much of a prompt change at frame ``change`` with a blend of ``blend`` frames ``frame`` takes."""
    return min(1.0, max(0.0, (frame - change + blend + 1) / (blend + 1)))


def prompt_weights(sampling: Sampling, frame: int) -> dict[str, float]:
    """The prompts frame ``frame`` (0-based, of the job's frames) takes, each with its weight (they sum to 1)."""
    weights = {sampling.prompt: 1.0}
    for change in sampling.prompt_schedule:
        weight = change_weight(change.frame, sampling.prompt_blend, frame)
        if weight == 0.0:
            break  # the changes rise: none after this one has begun either
        weights = {prompt: held * (1.0 - weight) for prompt, held in weights.items() if weight < 1.0}
        weights[change.prompt] = weights.get(change.prompt, 0.0) + weight
    return weights


def positive_embeddings(embeds: torch.Tensor) -> torch.Tensor:
    """The positive (prompt) embeddings of ``denoise_batch``'s ``embeds``: (1, L, D) of one frame, or (B, L, D)
    of each frame of a batch."""
    return embeds[-1:] if embeds.dim() == 3 else embeds[-1]


class PromptEmbeddings:
    """The embeddings of a job with a prompt schedule: each distinct prompt encoded once, a batch's frames
    mixed from them (``prompt_weights``) as (G, B, L, D): G = 2 ([negative; positive]) where guidance is on."""

    def __init__(self, pipe, sampling: Sampling):
        self.sampling = sampling
        first = encode_prompt(pipe, sampling)  # the strip's prompt with the negative one, as without a schedule
        self.negative = first[:1] if sampling.guided else None
        self.encoded = {sampling.prompt: first[-1:]}
        for change in sampling.prompt_schedule:
            if change.prompt not in self.encoded:
                self.encoded[change.prompt] = pipe.encode_prompt(change.prompt, pipe.device, 1, False)[0]

    def frame(self, frame: int) -> torch.Tensor:
        """The positive embeddings of ``frame`` (1, L, D): a prompt's own where it alone holds there, else the
        weighted sum of the prompts' (in float32, then in their dtype)."""
        weights = prompt_weights(self.sampling, frame)
        if len(weights) == 1:
            return self.encoded[next(iter(weights))]
        mixed = sum(weight * self.encoded[prompt].float() for prompt, weight in weights.items())
        return mixed.to(self.encoded[self.sampling.prompt].dtype)

    def __call__(self, frames: Sequence[int]) -> torch.Tensor:
        positives = torch.cat([self.frame(f) for f in frames])  # (B, L, D)
        if self.negative is None:
            return positives[None]
        return torch.stack([self.negative.expand_as(positives), positives])


def job_embeddings(pipe, sampling: Sampling) -> Embeddings:
    """The embeddings of each batch of a job (call it in the pipeline's turn, ``turns.py``): without a prompt
    schedule ``encode_prompt``'s one frame for every batch, else ``PromptEmbeddings``."""
    if not sampling.prompt_schedule:
        embeds = encode_prompt(pipe, sampling)
        return lambda frames: embeds
    return PromptEmbeddings(pipe, sampling)
