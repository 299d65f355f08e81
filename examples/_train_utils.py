"""Helpers of examples/train_cifar10.py (start from that script): CIFAR-10 data, MixUp/CutMix, a
process's device and process group, random states, checkpoints and the progress bar; kept apart
so that the script reads as the recipe."""
from __future__ import annotations

import math
import os
import pickle
import random
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Dataset

import fastvit
import fastvit.data

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
NUM_CLASSES = 10
IMG_SIZE = 32


class UsageError(Exception):
    """A mistake in the arguments or the environment: reported as one line, exit status 2."""


class DataNotFound(UsageError):
    pass


# -- data ----------------------------------------------------------------------------------------
def find_cifar_dir(path: str) -> str:
    """``path`` or its ``cifar-10-batches-py`` subfolder, whichever holds all six batch files."""
    path = os.path.expanduser(path)
    for d in (path, os.path.join(path, "cifar-10-batches-py")):
        if all(os.path.isfile(os.path.join(d, f)) for f in TRAIN_FILES + [TEST_FILE]):
            return d
    raise DataNotFound(
        f"CIFAR-10 not found in {path!r}. This script downloads nothing: get the CIFAR-10 "
        f"'python version' (cifar-10-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html), "
        f"extract it, and pass --data pointing at the extracted cifar-10-batches-py folder or its "
        f"parent (or use --synthetic N for a smoke test). Needed files: {', '.join(TRAIN_FILES)}, {TEST_FILE}.")


def _read_batch(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    try:
        data, labels = d[b"data"], d[b"labels"]
    except (KeyError, TypeError):
        raise DataNotFound(f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels')")
    images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, IMG_SIZE, IMG_SIZE)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(images) != len(labels):
        raise DataNotFound(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_cifar10(path: str):
    """((train images, labels), (test images, labels)): uint8 (N, 3, 32, 32) and int64 (N,)."""
    root = find_cifar_dir(path)
    parts = [_read_batch(os.path.join(root, f)) for f in TRAIN_FILES]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return train, _read_batch(os.path.join(root, TEST_FILE))


def synthetic_cifar10(n: int, seed: int):
    """``n`` random CIFAR-shaped training images with random labels, and n // 5 (at least one)
    test images, CIFAR-10's 5:1 split; the same for the same seed. Runs the script without a data
    set (smoke tests, timing); there is nothing to learn in them."""
    g = torch.Generator().manual_seed(seed)

    def draw(k: int):
        images = torch.randint(0, 256, (k, 3, IMG_SIZE, IMG_SIZE), dtype=torch.uint8, generator=g)
        return images, torch.randint(0, NUM_CLASSES, (k,), generator=g)

    return draw(n), draw(max(1, n // 5))


class CIFAR10(Dataset):
    """uint8 (3, 32, 32) images; training adds crop (4 px padding) + flip, then RandAugment."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool, randaugment: bool = False):
        self.images, self.labels, self.train = images, labels, train
        self.randaugment = None
        if randaugment:
            from torchvision.transforms import v2
            self.randaugment = v2.RandAugment(num_ops=2, magnitude=9)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.train:
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            img = F.pad(img, (4, 4, 4, 4))[:, dy:dy + IMG_SIZE, dx:dx + IMG_SIZE]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
            if self.randaugment is not None:
                img = self.randaugment(img)
            img = img.contiguous()
        return img, self.labels[i]


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def mix_batch(x: torch.Tensor, target: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of the batch with its reverse.
    Random numbers come from the CPU generator, so runs reproduce on any device."""
    if (args.mixup <= 0 and args.cutmix <= 0) or torch.rand(()).item() >= args.mix_prob:
        return x, target
    use_cutmix = args.cutmix > 0 and (args.mixup <= 0 or torch.rand(()).item() < args.switch_prob)
    alpha = args.cutmix if use_cutmix else args.mixup
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    partner = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = torch.randint(0, h, ()).item(), torch.randint(0, w, ()).item()
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    else:
        x = lam * x + (1.0 - lam) * partner
    return x, lam * target + (1.0 - lam) * target.flip(0)


def mixed_resolution_groups(images: torch.Tensor, sizes: list[int], patch: int, token_budget: int,
                            generator: torch.Generator | None = None) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Each image of the batch resized to a height and a width drawn from ``sizes`` (aspect
    ratios vary too), then grouped by ``fastvit.data.pack_by_tokens`` into packed micro-batches
    of at most ``token_budget`` tokens: ``[(list of (C, h, w) images, indices into the batch)]``.
    The sides come from torch's default generator unless one is given (seeded per rank, and
    saved with the checkpoint's random states, so a resumed run draws the same sides)."""
    sides = torch.tensor(sizes)[torch.randint(len(sizes), (len(images), 2), generator=generator)].tolist()
    resized = [F.interpolate(img[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
               for img, (h, w) in zip(images, sides)]
    groups = fastvit.data.pack_by_tokens(resized, token_budget, patch)
    return [([resized[i] for i in g], torch.tensor(g, device=images.device)) for g in groups]


def mixed_resolution_step(model, images, target, args, amp):
    """One step's forward and backward on the batch resized to mixed sides and packed
    (``mixed_resolution_groups``); gradients accumulate with each micro-batch's share."""
    patch = fastvit.model_config(args.model).patch_size if args.patch_size is None else args.patch_size
    budget = len(images) * ((IMG_SIZE // patch) ** 2 + 1)  # the tokens of the batch at 32 px
    logits = target.new_empty(target.shape)
    loss = target.new_zeros(())
    for group, idx in mixed_resolution_groups(images, args.mixed_sides, patch, budget):
        with amp:
            out = model(group)
        part = soft_cross_entropy(out, target[idx]) * (len(idx) / len(images))
        part.backward()
        logits[idx] = out.detach().float()
        loss += part.detach()
    return logits, loss


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# -- devices and processes -----------------------------------------------------------------------
def env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text else default
    except ValueError:
        raise UsageError(f"environment variable {name}: expected an integer, got {text!r}") from None


def select_device(requested: str | None, world: int, local_rank: int) -> torch.device:
    """This process's device. A CUDA device always gets an index, because torch.cuda.set_device
    refuses a bare "cuda": cuda:LOCAL_RANK (0 without torchrun) unless an index is given, and
    always cuda:LOCAL_RANK under torchrun, one GPU per process."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UsageError(f"--device: expected cpu here (CUDA is not available), got {requested!r}")
    if world > 1 and device.index is not None and device.index != local_rank:
        raise UsageError(f"--device: expected cuda (each torchrun process takes cuda:LOCAL_RANK), got {requested!r}")
    index = local_rank if device.index is None else device.index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        source = "LOCAL_RANK" if device.index is None else "--device"
        raise UsageError(f"{source}: expected a GPU index below {count} (the GPUs visible), got cuda:{index}")
    return torch.device("cuda", index)


def setup_distributed(args):
    """(rank, world_size, device); initialises the process group when launched by torchrun."""
    world, rank, local_rank = env_int("WORLD_SIZE", 1), env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    device = select_device(args.device, world, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return rank, world, device


def runnable_backend(backend: str, device: torch.device) -> str:
    """The concrete backend the model will use on ``device``; triton only where its kernels run."""
    if backend == "triton" and not fastvit.backend.triton_supported(device):
        raise UsageError(f"--backend: expected sdpa or eager on {device} (triton needs a CUDA GPU of compute "
                         f"capability >= 8.0, or Triton's CPU interpreter with TRITON_INTERPRET=1), got 'triton'")
    try:
        return fastvit.resolve_backend(backend, device)
    except (ValueError, RuntimeError) as e:  # e.g. FASTVIT_BACKEND names a backend that cannot run here
        raise UsageError(str(e).splitlines()[0]) from None


# -- random states -------------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- checkpoints ---------------------------------------------------------------------------------
def _replace(tmp: str, path: str) -> None:
    os.replace(tmp, path)  # atomic: an interrupted save never leaves half a checkpoint


def save_weights(model, path: str) -> None:
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path + ".tmp", metadata={"format": "pt"})
    _replace(path + ".tmp", path)


def save_checkpoint(out: str, model, optimizer, scheduler, epoch: int, best_acc: float, rng_states, args) -> None:
    save_weights(model, os.path.join(out, "last.safetensors"))
    state = {"epoch": epoch, "best_acc": best_acc, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_states, "world_size": len(rng_states),
             "args": {k: v for k, v in vars(args).items()}}
    torch.save(state, os.path.join(out, "last.pt.tmp"))
    _replace(os.path.join(out, "last.pt.tmp"), os.path.join(out, "last.pt"))


def resolve_resume(path: str) -> tuple[str, str]:
    """(last.pt, last.safetensors) of ``--resume path`` (the folder or its last.pt)."""
    if not os.path.exists(path):
        raise UsageError(f"--resume: expected a checkpoint folder (holding last.pt and last.safetensors) or its "
                         f"last.pt, got {path!r}, which does not exist")
    state = os.path.join(path, "last.pt") if os.path.isdir(path) else path
    weights = os.path.splitext(state)[0] + ".safetensors"
    for f in (state, weights):
        if not os.path.isfile(f):
            raise UsageError(f"--resume: expected {os.path.basename(f)} in {os.path.dirname(f) or '.'!r}, "
                             f"got no such file")
    return state, weights


# -- progress ------------------------------------------------------------------------------------
class Progress:
    """tqdm when installed, else a one-line counter on stderr; silent when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.enabled, self.total, self.desc, self.n, self._bar = enabled, total, desc, 0, None
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
            except ImportError:
                pass

    def update(self, n: int, **stats) -> None:
        self.n += n
        if not self.enabled:
            return
        text = {k: f"{v:.4g}" for k, v in stats.items()}
        if self._bar is not None:
            self._bar.set_postfix(text, refresh=False)
            self._bar.update(n)
        else:
            fields = " ".join(f"{k} {v}" for k, v in text.items())
            print(f"\r{self.desc} {self.n}/{self.total} {fields}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)
