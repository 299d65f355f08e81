"""What every conversion shares: the refusal error, building without initialising, strict loading."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..vit import FastViT


class UnsupportedModelError(ValueError):
    """The source model has a feature FastViT does not implement; converting would be wrong."""


def build_with_weights(kwargs: dict, state_dict: dict, source: str, like: torch.Tensor,
                       training: bool) -> FastViT:
    """A FastViT of ``kwargs`` holding copies of ``state_dict``'s tensors, on ``like``'s device
    and dtype, in ``training`` mode. Built on the meta device: no time spent initialising
    weights that are replaced at once."""
    with torch.device("meta"):
        model = FastViT(**kwargs)
    sd = {k: v.detach().to(device=like.device, dtype=like.dtype if v.is_floating_point() else v.dtype, copy=True)
          for k, v in state_dict.items()}
    load_strict(model, sd, source=source, assign=True)
    return model.train(training)


def load_strict(model: nn.Module, sd: dict, source: str, strict: bool = True, assign: bool = False) -> None:
    """``load_state_dict`` that reports every missing, unexpected or misshapen key at once."""
    own = model.state_dict()
    problems = []
    for k in own:
        if k not in sd:
            problems.append(f"missing key {k} (shape {tuple(own[k].shape)})")
        elif tuple(sd[k].shape) != tuple(own[k].shape):
            problems.append(f"{k}: checkpoint shape {tuple(sd[k].shape)}, model shape {tuple(own[k].shape)}")
    problems += [f"unexpected key {k}" for k in sd if k not in own]
    if strict and problems:
        raise ValueError(f"weights from {source} do not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict({k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)},
                          strict=strict, assign=assign)
