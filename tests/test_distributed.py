"""Data-parallel training on two CPU processes (gloo): DDP and FSDP2 give the gradients of one
process on the whole batch, and examples/train_cifar10.py trains under DDP (torchrun's
environment variables) and resumes to bitwise the weights of an uninterrupted run.

Starting an interpreter that imports torch costs seconds, so one pair of processes
(torch.multiprocessing, start method "spawn") runs every case in turn and writes one result file
per case and rank; each test then reads its own. The children inherit this process's
environment, so TRITON_INTERPRET=1 (set by conftest before triton is imported) holds there too.
Workers still running after TIMEOUT_S are killed, and the cases they did not report fail.

The script's CUDA branches (device choice, torch.cuda.set_device, NCCL) run here with CUDA
simulated on the CPU; see the note above those tests for what that cannot cover.
"""
import copy
import os
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastvit import FastViT
from tests._tolerances import rel_err

WORLD = 2
PER_RANK = 3
TIMEOUT_S = 90.0  # a guard against hangs; the whole module takes ~25 s
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10,
             drop_rate=0.0, attn_drop_rate=0.0, proj_drop_rate=0.0, drop_path_rate=0.0)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:  # all bound at once, so the ports are distinct
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# eager and sdpa only: under the Triton interpreter each triton case costs ~20 s per process.
CASES = [("ddp", "eager"), ("ddp", "sdpa"), ("fsdp2", "eager"), ("fsdp2", "triton")]


def _check_one_step(rank: int, strategy: str, backend: str) -> None:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = FastViT(**SMALL, backend=backend)
    single = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * PER_RANK, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (WORLD * PER_RANK,), generator=g)

    # One process, the whole batch: the oracle.
    F.cross_entropy(single(x), y).backward()
    expected = {n: p.grad for n, p in single.named_parameters()}

    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        wrapped = DDP(model)
        F.cross_entropy(wrapped(x[mine]), y[mine]).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (WORLD,))
        for blk in model.blocks:
            fully_shard(blk, mesh=mesh)
        fully_shard(model, mesh=mesh)
        F.cross_entropy(model(x[mine]), y[mine]).backward()
        grads = {}
        for n, p in model.named_parameters():
            assert hasattr(p.grad, "full_tensor"), f"{n}: FSDP2 gradient is not a DTensor"
            assert p.grad.placements[0].is_shard(0), f"{n}: gradient placements {p.grad.placements}"
            grads[n] = p.grad.full_tensor()

    assert grads.keys() == expected.keys(), sorted(set(grads) ^ set(expected))
    bad = []
    for n, ref in expected.items():
        assert grads[n] is not None, f"{n}: no gradient"
        assert grads[n].shape == ref.shape, f"{n}: gradient shape {tuple(grads[n].shape)} vs {tuple(ref.shape)}"
        err = rel_err(grads[n], ref)
        if not err <= 1e-5:
            bad.append(f"{n}: relative error {err:.3g}")
    assert not bad, f"rank {rank}: gradients differ from one process on the whole batch:\n" + "\n".join(bad)


def _train_script_ddp(rank: int, ports, out_dir: str, data_dir: str) -> None:
    """The example script as torchrun starts it: 2 epochs straight vs 1 epoch, then --resume."""
    from tests.test_train_example import train
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    common = ["--data", data_dir, "--epochs", "2", "--backend", "sdpa", "--device", "cpu", "--workers", "0",
              "--no-progress", "--model", "vit_cifar_small", "--depth", "1", "--embed-dim", "32", "--num-heads",
              "2", "--patch-size", "8", "--batch-size", "8", "--warmup-epochs", "1", "--mixup", "0.8",
              "--cutmix", "1.0", "--dropout", "0.1", "--drop-path", "0.1"]
    a, b = os.path.join(out_dir, "script-a"), os.path.join(out_dir, "script-b")
    runs = [["--out", a], ["--out", b, "--stop-after", "1"], ["--out", b, "--resume", b]]
    for port, extra in zip(ports, runs):
        os.environ["MASTER_PORT"] = str(port)
        stats = train.main(common + extra)
        assert stats["steps"] == 64 // (WORLD * 8), stats
    if rank == 0:  # only rank 0 writes files
        from safetensors.torch import load_file
        wa, wb = load_file(os.path.join(a, "last.safetensors")), load_file(os.path.join(b, "last.safetensors"))
        differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not differ, f"resumed DDP run differs from the uninterrupted one in {differ}"
        state = torch.load(os.path.join(b, "last.pt"), weights_only=True)
        assert state["world_size"] == WORLD and len(state["rng"]) == WORLD
        assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"]), "ranks share a random stream"
        assert {"config.json", "last.pt", "last.safetensors", "log.jsonl"} <= set(os.listdir(b))


def _report(out_dir: str, name: str, rank: int, fn, *args) -> None:
    try:
        fn(*args)
        result = "ok"
    except Exception:
        result = traceback.format_exc()
    with open(os.path.join(out_dir, f"{name}.rank{rank}"), "w") as f:
        f.write(result)


def _worker(rank: int, ports, out_dir: str, data_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        for strategy, backend in CASES:
            _report(out_dir, f"{strategy}-{backend}", rank, _check_one_step, rank, strategy, backend)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    _report(out_dir, "train_cifar10-ddp", rank, _train_script_ddp, rank, ports[1:], out_dir, data_dir)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests.test_train_example import write_cifar
    out_dir = str(tmp_path_factory.mktemp("distributed"))
    data_dir = write_cifar(os.path.join(out_dir, "cifar"))
    ctx = mp.start_processes(_worker, args=(_free_ports(4), out_dir, data_dir), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    failure = None
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                failure = f"workers did not finish within {TIMEOUT_S:.0f} s and were killed"
                break
    except mp.ProcessRaisedException as e:  # a worker died outside a case
        failure = str(e)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return out_dir, failure


def _check_reported(results, name: str) -> None:
    out_dir, failure = results
    for rank in range(WORLD):
        path = os.path.join(out_dir, f"{name}.rank{rank}")
        if not os.path.exists(path):
            pytest.fail(f"rank {rank} reported nothing for {name}: {failure or 'no result file'}")
        with open(path) as f:
            result = f.read()
        assert result == "ok", f"{name}, rank {rank}:\n{result}"


@pytest.mark.parametrize("strategy, backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_one_step_gradients_equal_one_process_on_the_whole_batch(results, strategy, backend):
    _check_reported(results, f"{strategy}-{backend}")


def test_train_example_under_ddp_resumes_bitwise(results):
    _check_reported(results, "train_cifar10-ddp")


# -- the example's device choice and process group, with CUDA simulated ------------------------
# torch.cuda.is_available / device_count / set_device and torch.distributed.init_process_group
# are replaced by recorders, so the script's decisions (which device, which backend, which rank)
# are checked without a GPU. What this cannot cover: that NCCL really connects, DDP's
# device_ids, CUDA random states in checkpoints, pinned memory and bf16 autocast on a GPU; those
# need real GPUs (examples/train_cifar10.py on a GPU machine, with and without torchrun).
@pytest.fixture
def fake_cuda(monkeypatch):
    from tests.test_train_example import train
    calls = {"set_device": [], "init_process_group": []}

    def set_device(device):
        # the real one raises "Expected a torch.device with a specified index" for a bare "cuda"
        assert isinstance(device, torch.device) and device.type == "cuda" and device.index is not None, device
        calls["set_device"].append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls["init_process_group"].append(
        dict(backend=backend, **kw)))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return train, calls


# (--device, WORLD_SIZE, RANK, LOCAL_RANK) -> the device and the process group it must pick
SETUPS = {
    "one-gpu-default": (None, None, None, None, "cuda:0", None),  # the crash of issue 10
    "bare-cuda": ("cuda", None, None, None, "cuda:0", None),
    "indexed": ("cuda:1", None, None, None, "cuda:1", None),
    "cpu": ("cpu", None, None, None, "cpu", None),
    "torchrun-nccl": (None, "4", "3", "1", "cuda:1", dict(backend="nccl", rank=3, world_size=4)),
    "torchrun-cuda": ("cuda", "2", "0", "0", "cuda:0", dict(backend="nccl", rank=0, world_size=2)),
    "torchrun-one-process": (None, "1", "0", "1", "cuda:1", None),
    "torchrun-cpu-gloo": ("cpu", "2", "1", "1", "cpu", dict(backend="gloo", rank=1, world_size=2)),
}


@pytest.mark.parametrize("device, world, rank, local_rank, expected, group", SETUPS.values(), ids=SETUPS.keys())
def test_example_picks_an_indexed_device_and_the_process_group(fake_cuda, monkeypatch, device, world, rank,
                                                               local_rank, expected, group):
    train, calls = fake_cuda
    for name, value in (("WORLD_SIZE", world), ("RANK", rank), ("LOCAL_RANK", local_rank)):
        if value is not None:
            monkeypatch.setenv(name, value)
    args = train.parse_args([] if device is None else ["--device", device])
    got_rank, got_world, got_device = train.setup_distributed(args)
    assert got_device == torch.device(expected)
    assert (got_rank, got_world) == (int(rank or 0), int(world or 1))
    assert calls["set_device"] == ([torch.device(expected)] if expected.startswith("cuda") else [])
    assert calls["init_process_group"] == ([group] if group else [])


BAD_SETUPS = {
    "index-past-the-gpus": ("cuda:2", None, None, "--device: expected a GPU index below 2 (the GPUs visible), got cuda:2"),
    "local-rank-past-the-gpus": (None, "4", "2", "LOCAL_RANK: expected a GPU index below 2"),
    "index-under-torchrun": ("cuda:0", "2", "1", "--device: expected cuda (each torchrun process takes cuda:LOCAL_RANK)"),
    "world-size-not-a-number": (None, "two", "0", "environment variable WORLD_SIZE: expected an integer, got 'two'"),
}


@pytest.mark.parametrize("device, world, local_rank, message", BAD_SETUPS.values(), ids=BAD_SETUPS.keys())
def test_example_refuses_a_device_it_cannot_use_in_one_line(fake_cuda, monkeypatch, capsys, device, world,
                                                            local_rank, message):
    train, calls = fake_cuda
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    argv = ["--synthetic", "8", "--batch-size", "4"] + ([] if device is None else ["--device", device])
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_cifar10.py: error: ") and message in err[0], err
    assert calls == {"set_device": [], "init_process_group": []}
