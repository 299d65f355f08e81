#!/usr/bin/env python
"""Train a Vision Transformer on CIFAR-10 with fastvit.

The recipe of the ViT write-ups: AdamW (lr 1e-3, weight decay 0.05, none on biases, norms and
embeddings), linear warmup then cosine decay per step, label smoothing 0.1, random crop
(4 px zero padding) and horizontal flip; RandAugment, MixUp and CutMix on request.

Data: the CIFAR-10 "python version" batches (data_batch_1 .. data_batch_5, test_batch) in a
local folder (``--data``; its ``cifar-10-batches-py`` subfolder is found too). Nothing is
downloaded.

    python examples/train_cifar10.py --data ~/data/cifar10 --out runs/vit_small
    python examples/train_cifar10.py --data ~/data/cifar10 --out runs/vit_small --resume runs/vit_small
    torchrun --nproc_per_node=4 examples/train_cifar10.py --data ~/data/cifar10 --out runs/ddp

Under torchrun (WORLD_SIZE > 1) each process takes one GPU (LOCAL_RANK) and ``--batch-size``
images per step, so the global batch is WORLD_SIZE x --batch-size; only rank 0 prints and saves.

Each epoch writes ``last.safetensors`` (model weights, loadable with fastvit.load_checkpoint), and
``last.pt`` (optimizer, scheduler, epoch and every rank's RNG states; loads with
``torch.load(weights_only=True)``), ``best.safetensors`` when the test accuracy improves, and a
line of ``log.jsonl``. ``--resume`` continues to the same weights, bit for bit, as a run that was
never interrupted (same world size and device; on GPUs add ``--deterministic``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

import fastvit

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
NUM_CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a fastvit ViT on CIFAR-10.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="data/cifar10", help="folder with the CIFAR-10 python batches")
    p.add_argument("--out", default="runs/cifar10", help="folder for checkpoints and the log")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: its last.pt, or the folder holding it")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vit_cifar_small", choices=fastvit.list_models())
    m.add_argument("--backend", default="auto", choices=fastvit.BACKENDS)
    m.add_argument("--depth", type=int, default=None, help="override the variant's depth")
    m.add_argument("--embed-dim", type=int, default=None, help="override the variant's width")
    m.add_argument("--num-heads", type=int, default=None, help="override the variant's head count")
    m.add_argument("--patch-size", type=int, default=None, help="override the variant's patch size")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout after embeddings, projections and MLPs")
    m.add_argument("--attn-dropout", type=float, default=0.0, help="dropout on attention probabilities")
    m.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the last block")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=200)
    o.add_argument("--batch-size", type=int, default=128, help="images per step and process")
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    o.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine")
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--warmup-epochs", type=float, default=5.0)
    o.add_argument("--label-smoothing", type=float, default=0.1)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    o.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    a = p.add_argument_group("augmentation")
    a.add_argument("--randaugment", action="store_true", help="RandAugment (2 ops, magnitude 9)")
    a.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="MixUp Beta(alpha, alpha); 0: off (0.8 usual)")
    a.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix Beta(alpha, alpha); 0: off (1.0 usual)")
    a.add_argument("--mix-prob", type=float, default=1.0, help="probability of mixing a batch")
    a.add_argument("--switch-prob", type=float, default=0.5, help="with both on: probability of CutMix")
    r = p.add_argument_group("run")
    r.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available)")
    r.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (bitwise resume on GPUs)")
    r.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs in total, as if interrupted (time-limited jobs; --resume continues)")
    r.add_argument("--limit-train-batches", type=int, default=None, help="batches per epoch (smoke tests)")
    r.add_argument("--limit-eval-batches", type=int, default=None, help="test batches per evaluation")
    r.add_argument("--log-interval", type=int, default=10, help="steps between progress-bar updates")
    r.add_argument("--no-progress", action="store_true", help="no progress bar, only one line per epoch")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "log_interval"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("limit_train_batches", "limit_eval_batches", "stop_after"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.mixup, args.cutmix) < 0 or not 0 <= args.mix_prob <= 1 or not 0 <= args.switch_prob <= 1:
        p.error("--mixup and --cutmix must be >= 0, --mix-prob and --switch-prob in [0, 1]")
    return args


# -- data ----------------------------------------------------------------------------------------
class DataNotFound(Exception):
    pass


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
        f"parent. Needed files: {', '.join(TRAIN_FILES)}, {TEST_FILE}.")


def _read_batch(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    try:
        data, labels = d[b"data"], d[b"labels"]
    except (KeyError, TypeError):
        raise DataNotFound(f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels')")
    images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(images) != len(labels):
        raise DataNotFound(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_cifar10(path: str):
    root = find_cifar_dir(path)
    parts = [_read_batch(os.path.join(root, f)) for f in TRAIN_FILES]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return train, _read_batch(os.path.join(root, TEST_FILE))


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
            img = F.pad(img, (4, 4, 4, 4))[:, dy:dy + 32, dx:dx + 32]
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


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# -- model and optimiser -------------------------------------------------------------------------
def model_kwargs(args) -> dict:
    kw = dict(num_classes=NUM_CLASSES, backend=args.backend, drop_rate=args.dropout, proj_drop_rate=args.dropout,
              attn_drop_rate=args.attn_dropout, drop_path_rate=args.drop_path)
    for name in ("depth", "embed_dim", "num_heads", "patch_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return kw


def build_optimizer(model, args) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # biases, LayerNorm parameters, position embeddings and the CLS token are not decayed
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999))


def build_scheduler(optimizer, args, steps_per_epoch: int):
    total = args.epochs * steps_per_epoch
    warmup = min(int(round(args.warmup_epochs * steps_per_epoch)), total)
    floor = args.min_lr / args.lr if args.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- distributed ---------------------------------------------------------------------------------
def setup_distributed(args):
    """(rank, world_size, device); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


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
    state = os.path.join(path, "last.pt") if os.path.isdir(path) else path
    weights = os.path.splitext(state)[0] + ".safetensors"
    for f in (state, weights):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"--resume {path!r}: {f} does not exist (expected last.pt and last.safetensors)")
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


# -- loops ---------------------------------------------------------------------------------------
def train_one_epoch(model, loader, optimizer, scheduler, args, device, epoch: int, is_main: bool) -> dict:
    model.train()
    steps = len(loader) if args.limit_train_batches is None else min(len(loader), args.limit_train_batches)
    bar = Progress(steps, f"epoch {epoch + 1}/{args.epochs}", is_main and not args.no_progress)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp and device.type == "cuda" else nullcontext()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen, shown = 0, 0
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if step >= steps:
            break
        images = normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        target = F.one_hot(labels, NUM_CLASSES).float()
        target = target * (1.0 - args.label_smoothing) + args.label_smoothing / NUM_CLASSES
        images, target = mix_batch(images, target, args)
        with amp:
            logits = model(images)
        loss = soft_cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(images)
        correct += (logits.argmax(-1) == target.argmax(-1)).sum()
        seen += len(images)
        if (step + 1) % args.log_interval == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            bar.update(step + 1 - shown, loss=(loss_sum / seen).item(), acc=(correct / seen).item(),
                       img_s=seen / max(elapsed, 1e-9), lr=scheduler.get_last_lr()[0])
            shown = step + 1
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    return {"train_loss": (totals[0] / totals[2]).item(), "train_acc": (totals[1] / totals[2]).item(),
            "images_per_s": totals[2].item() / max(elapsed, 1e-9), "steps": steps}


@torch.no_grad()
def evaluate(model, loader, args, device) -> dict:
    model.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp and device.type == "cuda" else nullcontext()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    for step, (images, labels) in enumerate(loader):
        if args.limit_eval_batches is not None and step >= args.limit_eval_batches:
            break
        images, labels = normalize(images.to(device)), labels.to(device)
        with amp:
            logits = model(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        totals[1] += (logits.argmax(-1) == labels).sum()
        totals[2] += len(labels)
    if dist.is_initialized():
        dist.all_reduce(totals)
    n = max(totals[2].item(), 1.0)
    return {"test_loss": totals[0].item() / n, "test_acc": totals[1].item() / n}


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        (train_x, train_y), (test_x, test_y) = load_cifar10(args.data)
    except DataNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    rank, world, device = setup_distributed(args)
    is_main = rank == 0
    try:
        return _run(args, rank, world, device, is_main, train_x, train_y, test_x, test_y)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(args, rank, world, device, is_main, train_x, train_y, test_x, test_y) -> dict:
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    random.seed(args.seed)
    model = fastvit.create_model(args.model, **model_kwargs(args)).to(device)
    raw_model = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(args.seed + rank)  # different dropout and augmentation on each rank

    train_set = CIFAR10(train_x, train_y, train=True, randaugment=args.randaugment)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **loader_kw)
    if len(train_loader) == 0:
        raise SystemExit(f"error: {len(train_set)} training images cannot fill one batch of {args.batch_size} "
                         f"per process on {world} process(es); lower --batch-size")
    test_set = Subset(CIFAR10(test_x, test_y, train=False), range(rank, len(test_y), world))  # each image once
    test_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False, **loader_kw)

    steps_per_epoch = len(train_loader) if args.limit_train_batches is None else min(len(train_loader), args.limit_train_batches)
    optimizer = build_optimizer(raw_model, args)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)

    start_epoch, best_acc = 0, 0.0
    if args.resume:
        from safetensors.torch import load_file
        state_path, weights_path = resolve_resume(args.resume)
        raw_model.load_state_dict(load_file(weights_path, device=str(device)))
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_acc = int(state["epoch"]), float(state["best_acc"])
        if state["world_size"] == world:
            set_rng_state(state["rng"][rank], device)
        elif is_main:
            print(f"warning: checkpoint from {state['world_size']} process(es), running on {world}: "
                  "random streams restart, so the run will not match an uninterrupted one bit for bit",
                  file=sys.stderr)
        if is_main:
            print(f"resumed from {state_path} after epoch {start_epoch}", file=sys.stderr)

    if is_main:
        os.makedirs(args.out, exist_ok=True)
        n_params = sum(p.numel() for p in raw_model.parameters())
        backend = fastvit.resolve_backend(raw_model.backend, device)
        print(f"{args.model} {model_kwargs(args)}: {n_params / 1e6:.2f}M parameters, backend {backend}, "
              f"device {device}, {world} process(es), {len(train_set)} train / {len(test_y)} test images",
              file=sys.stderr)
        with open(os.path.join(args.out, "config.json"), "w") as f:
            kw = {k: v for k, v in model_kwargs(args).items() if k != "backend"}
            json.dump({"model": args.model, "overrides": kw}, f, indent=1)

    stats = {"epoch": start_epoch, "best_acc": best_acc}
    end_epoch = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, end_epoch):
        sampler.set_epoch(epoch)
        stats = {"epoch": epoch + 1}
        stats.update(train_one_epoch(model, train_loader, optimizer, scheduler, args, device, epoch, is_main))
        stats.update(evaluate(model, test_loader, args, device))
        improved = stats["test_acc"] > best_acc
        best_acc = max(best_acc, stats["test_acc"])
        stats["best_acc"] = best_acc
        # every rank's random state, so a resumed run draws what this one would have drawn next
        states = [rng_state(device)]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, rng_state(device))
            states = [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in s.items()} for s in states]
        if is_main:
            save_checkpoint(args.out, raw_model, optimizer, scheduler, epoch + 1, best_acc, states, args)
            if improved:
                save_weights(raw_model, os.path.join(args.out, "best.safetensors"))
            with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(stats) + "\n")
            print(f"epoch {epoch + 1}/{args.epochs}  train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.4f}  "
                  f"test loss {stats['test_loss']:.4f} acc {stats['test_acc']:.4f}  "
                  f"{stats['images_per_s']:.0f} img/s  lr {scheduler.get_last_lr()[0]:.3g}", file=sys.stderr)
    return stats


if __name__ == "__main__":
    main()
