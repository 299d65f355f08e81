"""Argument types of the ``fastvit`` command: each turns a bad value into one clear line that
names what was expected and what was given, and the recorded command line."""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
from pathlib import Path

__all__ = ["CLIError", "Parser", "int_list", "choice_list", "dtype", "model", "cnn_model", "flops_model",
           "positive_int", "archs", "device",
           "check_resolutions", "portable_command"]


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage too: one line is enough
        raise CLIError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 224,512; got {text!r}")
    return values


def choice_list(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}; got {text!r}")
        return list(dict.fromkeys(values))
    return parse


def dtype(text: str) -> str:
    from .profiling.speed_cases import dtype_name, parse_dtype
    try:
        return dtype_name(parse_dtype(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model(text: str) -> str:
    """A registered model name; otherwise the close matches and where to see them all."""
    from .vit import list_models

    names = list_models()
    if text in names:
        return text
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = ""
    if close:
        hint = f"; did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?"
    raise argparse.ArgumentTypeError(f"unknown model {text!r}{hint} (`fastvit list` prints every registered name)")


def cnn_model(text: str) -> str:
    """A torchvision classification model name (``--compare``); otherwise what it is, or the
    close matches."""
    from .profiling.cnn import check_cnn_name
    try:
        return check_cnn_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def flops_model(text: str) -> str:
    """A registered fastvit model, or a torchvision classification model (counted as a CNN)."""
    from .profiling.cnn import check_cnn_name, classification_models
    from .vit import list_models

    names = list_models()
    if text in names:
        return text
    try:
        return check_cnn_name(text)
    except ValueError as exc:
        if "not a classification model" in str(exc):
            raise argparse.ArgumentTypeError(str(exc)) from None
    close = difflib.get_close_matches(text, names + classification_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise argparse.ArgumentTypeError(f"unknown model {text!r}{hint} (a fastvit model, see `fastvit list`, or a "
                                     "torchvision classification model such as resnet50)")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def archs(text: str) -> list[str]:
    """``sm_80,sm_90,sm_100,gfx942`` -> canonical names (``sm_90a`` and ``90`` read as ``sm_90``)."""
    from .profiling.arch_limits import ARCH_LIMITS, arch_name
    found = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        try:
            found.append(arch_name(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown architecture {item!r} (supported: "
                                             f"{', '.join(ARCH_LIMITS)})") from None
    if not found:
        raise argparse.ArgumentTypeError(f"expected e.g. sm_80,sm_90,gfx942; got {text!r}")
    return list(dict.fromkeys(found))


def device(text: str) -> str:
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here (torch.cuda.is_available() is "
                                             "False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)


def check_resolutions(model_name: str, sizes, option: str) -> None:
    from .vit import model_config
    p = model_config(model_name).patch_size
    bad = [s for s in sizes if s % p]
    if bad:
        what = "a multiple" if len(bad) == 1 else "multiples"
        raise CLIError(f"{option} must be {what} of the patch size {p} of {model_name}, got "
                       f"{', '.join(map(str, bad))}")


def portable_command(argv, cwd=None, home=None) -> str:
    """``fastvit`` + ``argv`` as typed, except that no absolute path of this machine survives: an
    absolute path inside the working directory is shown relative to it, one inside the home
    directory as ``~/...``, any other as ``.../<last component>``. So a report says how it was
    made without naming the machine's folders."""
    cwd = Path(cwd or os.getcwd())
    home = Path(home or Path.home())

    def clean(arg: str) -> str:
        if not os.path.isabs(arg):
            return arg
        path = Path(os.path.normpath(arg))
        for root, prefix in ((cwd, ""), (home, "~/")):
            if path == root or root in path.parents:
                rel = path.relative_to(root).as_posix()
                return (prefix + rel) if rel != "." else (prefix.rstrip("/") or ".")
        return f".../{path.name}" if path.name else "..."

    def quote(arg: str) -> str:  # keep ~/ outside the quotes, so a shell still expands it
        if arg.startswith("--") and "=" in arg:
            opt, _, value = arg.partition("=")
            return f"{shlex.quote(opt)}={quote(value)}"
        arg = clean(arg)
        return "~/" + shlex.quote(arg[2:]) if arg.startswith("~/") else shlex.quote(arg)

    return " ".join(["fastvit"] + [quote(a) for a in argv])
