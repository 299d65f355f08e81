#!/usr/bin/env python
"""Train a Vision Transformer on CIFAR-10 with fastvit.

The recipe of the ViT write-ups: AdamW (lr 1e-3, weight decay 0.05, none on biases, norms and
embeddings), linear warmup then cosine decay per step, label smoothing 0.1, random crop
(4 px zero padding) and horizontal flip; RandAugment, MixUp and CutMix on request.

Data: the CIFAR-10 "python version" batches (data_batch_1 .. data_batch_5, test_batch) in a
local folder (``--data``, default ``data``; its ``cifar-10-batches-py`` subfolder is found too,
so ``tar -xzf cifar-10-python.tar.gz -C data`` is all the setup). Nothing is downloaded;
``--synthetic N`` trains on N random images made in memory instead (a smoke test).

    python examples/train_cifar10.py --synthetic 256 --epochs 1 --depth 2 --embed-dim 64 --num-heads 2
    python examples/train_cifar10.py --data data --out runs/vit_small
    python examples/train_cifar10.py --data data --out runs/vit_small --resume runs/vit_small
    torchrun --nproc_per_node=4 examples/train_cifar10.py --data data --out runs/ddp

Under torchrun (WORLD_SIZE > 1) each process takes one GPU (cuda:LOCAL_RANK) and ``--batch-size``
images per step, so the global batch is WORLD_SIZE x --batch-size; only rank 0 prints and saves.

Each epoch writes ``last.safetensors`` (model weights, loadable with fastvit.load_checkpoint), and
``last.pt`` (optimizer, scheduler, epoch and every rank's RNG states; loads with
``torch.load(weights_only=True)``), ``best.safetensors`` when the test accuracy improves, and a
line of ``log.jsonl``. ``--resume`` continues to the same weights, bit for bit, as a run that was
never interrupted (same world size and device; on GPUs add ``--deterministic``).

Bad arguments give one line on stderr and exit status 2, like the ``fastvit`` command.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset

import fastvit
from _train_utils import (CIFAR10, IMG_SIZE, NUM_CLASSES, Progress, UsageError, load_cifar10, mix_batch,
                          mixed_resolution_step, normalize,
                          resolve_resume, rng_state, runnable_backend, save_checkpoint, save_weights, set_rng_state,
                          setup_distributed, soft_cross_entropy, synthetic_cifar10)

PROG = "train_cifar10.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage block too: one line is enough
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" once: not to flags (off unless given), not to None (the help
    says what happens then), not where the help already names its default."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a fastvit ViT on CIFAR-10.", formatter_class=_HelpFormatter)
    p.add_argument("--data", default="data", help="folder with the CIFAR-10 python batches, or its parent "
                   "(what `tar -xzf cifar-10-python.tar.gz -C data` makes)")
    p.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="instead of --data: N random CIFAR-shaped training images (and N/5 test images) "
                        "made in memory from --seed; a smoke test that needs no data set")
    p.add_argument("--out", default="runs/cifar10", help="folder for checkpoints and the log")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: its last.pt, or the folder holding it")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vit_cifar_small",
                   help=f"registered variant, trained at 32 px: {', '.join(fastvit.list_models())}")
    m.add_argument("--backend", default="auto", choices=fastvit.BACKENDS,
                   help="auto: triton where its kernels run (CUDA capability >= 8.0), else sdpa")
    m.add_argument("--depth", type=int, default=None, help="override the variant's depth")
    m.add_argument("--embed-dim", type=int, default=None, help="override the variant's width")
    m.add_argument("--num-heads", type=int, default=None, help="override the variant's head count")
    m.add_argument("--patch-size", type=int, default=None, help="override the variant's patch size (divides 32)")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout after embeddings, projections and MLPs")
    m.add_argument("--attn-dropout", type=float, default=0.0, help="dropout on attention probabilities")
    m.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the last block")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=200, help="epochs of the learning-rate schedule")
    o.add_argument("--batch-size", type=int, default=128, help="images per step and process")
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    o.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine")
    o.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW weight decay (not on biases, norms, position embeddings, class tokens)")
    o.add_argument("--warmup-epochs", type=float, default=5.0, help="linear warmup before the cosine decay")
    o.add_argument("--label-smoothing", type=float, default=0.1, help="weight of the uniform target")
    o.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    o.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    a = p.add_argument_group("augmentation")
    a.add_argument("--randaugment", action="store_true", help="RandAugment (2 ops, magnitude 9)")
    a.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="MixUp Beta(alpha, alpha); 0: off (0.8 usual)")
    a.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix Beta(alpha, alpha); 0: off (1.0 usual)")
    a.add_argument("--mix-prob", type=float, default=1.0, help="probability of mixing a batch")
    a.add_argument("--switch-prob", type=float, default=0.5, help="with both on: probability of CutMix")
    a.add_argument("--mixed-resolution", default=None, metavar="SIDES",
                   help="train on images resized to heights and widths drawn from these sides (e.g. 16,24,32,40), "
                        "packed without padding by token budget; off by default")
    r = p.add_argument_group("run")
    r.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if CUDA is available, else cpu)")
    r.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    r.add_argument("--seed", type=int, default=0, help="seeds weights, augmentation, dropout and --synthetic")
    r.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (bitwise resume on GPUs)")
    r.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs in total, as if interrupted (time-limited jobs; --resume continues)")
    r.add_argument("--limit-train-batches", type=int, default=None, help="batches per epoch (smoke tests)")
    r.add_argument("--limit-eval-batches", type=int, default=None, help="test batches per evaluation")
    r.add_argument("--log-interval", type=int, default=10, help="steps between progress-bar updates")
    r.add_argument("--no-progress", action="store_true", help="no progress bar, only one line per epoch")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    return args


def check_args(args, parser) -> None:
    """Everything that can be checked before touching data or devices, each as one clear line."""
    # each condition states what must hold, so NaN (false in every comparison) is refused too
    def need(ok: bool, name: str, expected: str) -> None:
        if not ok:
            parser.error(f"--{name.replace('_', '-')}: expected {expected}, got {getattr(args, name)!r}")

    for name in ("epochs", "batch_size", "log_interval"):
        need(getattr(args, name) >= 1, name, "an integer >= 1")
    for name in ("limit_train_batches", "limit_eval_batches", "stop_after", "synthetic",
                 "depth", "embed_dim", "num_heads", "patch_size"):
        need(getattr(args, name) is None or getattr(args, name) >= 1, name, "an integer >= 1")
    need(args.workers >= 0, "workers", "an integer >= 0")
    need(args.lr > 0, "lr", "a learning rate > 0")
    for name in ("min_lr", "weight_decay", "warmup_epochs", "grad_clip", "mixup", "cutmix"):
        need(getattr(args, name) >= 0, name, "a number >= 0")
    for name in ("label_smoothing", "dropout", "attn_dropout", "drop_path"):
        need(0 <= getattr(args, name) < 1, name, "a number in [0, 1)")
    for name in ("mix_prob", "switch_prob"):
        need(0 <= getattr(args, name) <= 1, name, "a probability in [0, 1]")
    if args.model not in fastvit.list_models():
        close = difflib.get_close_matches(args.model, fastvit.list_models(), n=3, cutoff=0.5)
        known = f"close matches: {', '.join(close)}" if close else f"registered: {', '.join(fastvit.list_models())}"
        parser.error(f"--model: expected a registered variant, got {args.model!r}; {known}")
    cfg = fastvit.model_config(args.model)

    def variant(given) -> str:  # where a value the user did not pass comes from
        return "" if given is not None else f" ({args.model}'s)"

    embed_dim, num_heads = args.embed_dim or cfg.embed_dim, args.num_heads or cfg.num_heads
    if embed_dim % num_heads:
        parser.error(f"--embed-dim: expected a multiple of --num-heads {num_heads}{variant(args.num_heads)}, "
                     f"got {embed_dim}{variant(args.embed_dim)}")
    patch = args.patch_size or cfg.patch_size
    if IMG_SIZE % patch:
        parser.error(f"--patch-size: expected a divisor of the {IMG_SIZE} px images, "
                     f"got {patch}{variant(args.patch_size)}")
    if args.mixed_resolution is not None:
        try:
            sides = [int(v) for v in args.mixed_resolution.split(",")]
        except ValueError:
            sides = []
        need(bool(sides) and all(v >= patch and v % patch == 0 for v in sides), "mixed_resolution",
             f"comma-separated sides that are multiples of the patch size {patch}")
        need(args.mixup == 0 and args.cutmix == 0, "mixed_resolution",
             "no --mixup/--cutmix with it (they blend images of one size)")
        args.mixed_sides = sides
    if args.resume:
        try:
            resolve_resume(args.resume)
        except UsageError as e:
            parser.error(str(e))


# -- model and optimiser -------------------------------------------------------------------------
def model_kwargs(args) -> dict:
    # the variant's image size gives way to CIFAR's 32 px (its position embeddings are sized for it)
    kw = dict(img_size=IMG_SIZE, num_classes=NUM_CLASSES, backend=args.backend, drop_rate=args.dropout,
              proj_drop_rate=args.dropout, attn_drop_rate=args.attn_dropout, drop_path_rate=args.drop_path)
    for name in ("depth", "embed_dim", "num_heads", "patch_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return kw


def model_overrides(args) -> dict:
    """What the arguments change in the registered variant (the backend is not part of the model)."""
    return {k: v for k, v in model_kwargs(args).items() if k != "backend"}


def build_optimizer(model, args) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # biases, LayerNorm parameters, position embeddings and the CLS (register, distillation) tokens
        # are not decayed
        (no_decay if p.ndim <= 1 or name == "pos_embed" or name.endswith("_token") else decay).append(p)
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
        optimizer.zero_grad(set_to_none=True)
        if args.mixed_resolution is None:
            images, target = mix_batch(images, target, args)
            with amp:
                logits = model(images)
            loss = soft_cross_entropy(logits, target)
            loss.backward()
        else:  # packed micro-batches of mixed sizes, gradients accumulated with the batch's weights
            logits, loss = mixed_resolution_step(model, images, target, args, amp)
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
        if args.synthetic:
            data = synthetic_cifar10(args.synthetic, args.seed)
        else:
            data = load_cifar10(args.data)
        rank, world, device = setup_distributed(args)
        backend = runnable_backend(args.backend, device)
        return _run(args, rank, world, device, backend, *data)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(args, rank, world, device, backend, train, test) -> dict:
    (train_x, train_y), (test_x, test_y) = train, test
    is_main = rank == 0
    if len(train_x) // world < args.batch_size:  # each process drops its last partial batch
        raise UsageError(f"--batch-size: expected at most {len(train_x) // world} ({len(train_x)} training "
                         f"images on {world} process(es) must fill one batch), got {args.batch_size}")
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
    test_set = Subset(CIFAR10(test_x, test_y, train=False), range(rank, len(test_y), world))  # each image once
    test_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False, **loader_kw)

    steps_per_epoch = len(train_loader) if args.limit_train_batches is None else min(len(train_loader), args.limit_train_batches)
    optimizer = build_optimizer(raw_model, args)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)

    start_epoch, best_acc = 0, 0.0
    if args.resume:
        from safetensors.torch import load_file
        state_path, weights_path = resolve_resume(args.resume)
        try:
            raw_model.load_state_dict(load_file(weights_path, device=str(device)))
        except RuntimeError:  # missing, unexpected or differently shaped tensors: another architecture
            raise UsageError(f"--resume: expected weights of the model these arguments build ({args.model} with "
                             f"{model_overrides(args)}), got {weights_path!r}, made for another") from None
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
        print(f"{args.model} {model_kwargs(args)}: {n_params / 1e6:.2f}M parameters, backend {backend}, "
              f"device {device}, {world} process(es), {len(train_set)} train / {len(test_y)} test images",
              file=sys.stderr)
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({"model": args.model, "overrides": model_overrides(args)}, f, indent=1)

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
