"""examples/train_cifar10.py on a tiny CIFAR-10-format folder and on --synthetic images: checkpoints,\nbitwise resume, one-line errors for bad arguments, help text."""
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastvit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_cifar10.py")
TINY = ["--model", "vit_cifar_small", "--depth", "1", "--embed-dim", "32", "--num-heads", "2", "--patch-size", "8",
        "--batch-size", "16", "--workers", "0", "--device", "cpu", "--warmup-epochs", "1"]


def _load_script():
    # `python examples/train_cifar10.py` puts examples/ on sys.path for its helper module; so do we
    if os.path.dirname(SCRIPT) not in sys.path:
        sys.path.insert(0, os.path.dirname(SCRIPT))
    spec = importlib.util.spec_from_file_location("train_cifar10", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_script()
import _train_utils as train_utils  # noqa: E402  (examples/ is on sys.path now)


def write_cifar(folder, n_train=64, n_test=32, seed=0):
    """The CIFAR-10 python layout: pickled dicts with b'data' uint8 (N, 3072) and b'labels'."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    sizes = [len(c) for c in np.array_split(np.arange(n_train), 5)]
    for name, n in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", n_test)]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [b"x.png"] * n}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    return folder


def tiny_model(**kw):
    return fastvit.create_model("vit_cifar_small", depth=1, embed_dim=32, num_heads=2, patch_size=8, **kw)


def read_weights(path):
    from safetensors.torch import load_file
    return load_file(path)


def test_one_epoch_writes_loadable_checkpoints(tmp_path, capsys):
    data = write_cifar(tmp_path / "data" / "cifar-10-batches-py")  # the subfolder layout is found
    out = tmp_path / "run"
    stats = train.main(["--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
                        "--backend", "eager", "--log-interval", "1"] + TINY)
    assert data and stats["epoch"] == 1 and stats["steps"] == 4 and stats["images_per_s"] > 0
    assert 0.0 <= stats["test_acc"] <= 1.0 and np.isfinite(stats["train_loss"])
    err = capsys.readouterr().err
    # the epoch line; the progress bar's own refreshes depend on timing, so they are not required
    assert "img/s" in err and "epoch 1/1" in err

    assert {"last.safetensors", "last.pt", "log.jsonl", "config.json"} <= set(os.listdir(out))
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["world_size"] == 1
    assert {"optimizer", "scheduler", "rng", "best_acc", "args"} <= set(state)
    assert state["scheduler"]["last_epoch"] == 4
    assert len(state["optimizer"]["state"]) == len(list(tiny_model().parameters()))
    model = fastvit.load_checkpoint(tiny_model(num_classes=10), out / "last.safetensors")
    weights = read_weights(out / "last.safetensors")
    for name, p in model.state_dict().items():
        assert torch.equal(p, weights[name]), name
    assert tiny_model().state_dict()["head.weight"].shape == weights["head.weight"].shape
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(log) == 1 and log[0]["epoch"] == 1 and "test_acc" in log[0]
    cfg = json.load(open(out / "config.json"))
    assert cfg["model"] == "vit_cifar_small" and cfg["overrides"]["depth"] == 1
    if stats["test_acc"] > 0:
        assert (out / "best.safetensors").exists()

    # resuming it as another architecture is a usage error, not a state_dict traceback
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(tmp_path / "data"), "--out", str(out), "--resume", str(out), "--epochs", "2"]
                   + TINY + ["--depth", "2"])
    assert e.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--resume: expected weights of the model these arguments build" in line and "'depth': 2" in line, line


def test_resume_gives_bitwise_the_uninterrupted_weights(tmp_path):
    data = str(write_cifar(tmp_path / "data", n_train=48, n_test=16))
    # every source of randomness on: dropout, stochastic depth, RandAugment, MixUp and CutMix
    common = ["--data", data, "--epochs", "2", "--backend", "eager", "--no-progress", "--randaugment",
              "--mixup", "0.8", "--cutmix", "1.0", "--switch-prob", "0.5", "--dropout", "0.1",
              "--attn-dropout", "0.1", "--drop-path", "0.1"] + TINY
    straight = train.main(common + ["--out", str(tmp_path / "a")])
    train.main(common + ["--out", str(tmp_path / "b"), "--stop-after", "1"])
    after_one = read_weights(tmp_path / "b" / "last.safetensors")
    resumed = train.main(common + ["--out", str(tmp_path / "b"), "--resume", str(tmp_path / "b")])

    a = read_weights(tmp_path / "a" / "last.safetensors")
    b = read_weights(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resuming"
    assert any(not torch.equal(a[n], after_one[n]) for n in a), "the second epoch changed nothing"
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for i, st in sa["optimizer"]["state"].items():
        for key, value in st.items():
            assert torch.equal(value, sb["optimizer"]["state"][i][key]), (i, key)
    assert straight["test_loss"] == resumed["test_loss"] and straight["train_loss"] == resumed["train_loss"]


def test_triton_backend_trains_one_step(tmp_path):
    data = str(write_cifar(tmp_path / "data"))
    stats = train.main(["--data", data, "--out", str(tmp_path / "t"), "--epochs", "1", "--backend", "triton",
                        "--limit-train-batches", "1", "--limit-eval-batches", "1", "--no-progress"] + TINY)
    assert stats["steps"] == 1 and np.isfinite(stats["train_loss"]) and np.isfinite(stats["test_loss"])


def test_mixed_resolution_trains_on_packed_lists(tmp_path, monkeypatch):
    """Images resized to sides drawn from the list and packed by token budget: each step's
    micro-batches cover the batch once, and the model sees lists of several sizes."""
    seen = []
    original = fastvit.FastViT.forward

    def record(self, x):
        if isinstance(x, list):
            seen.append(sorted({tuple(im.shape[-2:]) for im in x}))
        return original(self, x)
    monkeypatch.setattr(fastvit.FastViT, "forward", record)
    stats = train.main(["--synthetic", "32", "--out", str(tmp_path / "m"), "--epochs", "1", "--backend", "triton",
                        "--mixed-resolution", "8,16,24", "--limit-train-batches", "1", "--limit-eval-batches", "1",
                        "--no-progress"] + TINY)
    assert stats["steps"] == 1 and np.isfinite(stats["train_loss"])
    sizes = {s for group in seen for s in group}
    assert len(sizes) > 1 and sizes <= {(h, w) for h in (8, 16, 24) for w in (8, 16, 24)}
    images = torch.randn(6, 3, 32, 32)
    groups = train_utils.mixed_resolution_groups(images, [8, 16, 24], 4, token_budget=6 * 17)
    assert sorted(i for _, idx in groups for i in idx.tolist()) == list(range(6))


def test_synthetic_images_are_cifar_shaped_and_seeded():
    (x, y), (tx, ty) = train.synthetic_cifar10(40, seed=3)
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.uint8 and tx.shape == (8, 3, 32, 32)
    assert y.shape == (40,) and y.dtype == torch.int64 and ty.shape == (8,)
    assert 0 <= int(y.min()) and int(y.max()) < 10 and len(set(y.tolist())) > 1
    assert int(x.max()) > 200 and int(x.min()) < 50  # the whole uint8 range, not a constant
    (x2, y2), _ = train.synthetic_cifar10(40, seed=3)
    (x3, _), _ = train.synthetic_cifar10(40, seed=4)
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    assert train.synthetic_cifar10(3, seed=0)[1][0].shape[0] == 1  # never an empty test set


def test_synthetic_run_needs_no_data_folder(tmp_path, capsys):
    stats = train.main(["--synthetic", "32", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s"),
                        "--epochs", "1", "--backend", "eager", "--no-progress"] + TINY)
    assert stats["steps"] == 2 and np.isfinite(stats["train_loss"]) and np.isfinite(stats["test_loss"])
    assert "32 train / 6 test images" in capsys.readouterr().err
    assert (tmp_path / "s" / "last.safetensors").exists()


def test_weight_decay_spares_biases_norms_position_embeddings_and_tokens():
    model = fastvit.create_model("deit_tiny_distilled_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=32)
    decay, no_decay = train.build_optimizer(model, train.parse_args(["--weight-decay", "0.3"])).param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "dist_token", "pos_embed"} <= spared
    assert all(n.endswith(("bias", "_token", "pos_embed")) or ".norm" in n or n.startswith("norm") for n in spared), spared
    decayed = {names[id(p)] for p in decay["params"]}
    assert "patch_embed.proj.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert len(spared) + len(decayed) == len(names)


def test_mixup_and_cutmix_targets():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    y = torch.nn.functional.one_hot(torch.arange(6) % 10, 10).float()
    args = train.parse_args(["--mixup", "0.8"])
    mx, my = train.mix_batch(x, y, args)
    lam = my[0, 0].item()  # sample 0 has class 0, its partner (sample 5) class 5
    assert 0 < lam < 1 and my[0, 5].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(mx, lam * x + (1 - lam) * x.flip(0))
    args = train.parse_args(["--cutmix", "1.0"])
    for _ in range(5):
        cx, cy = train.mix_batch(x, y, args)
        pasted = (cx != x).any(dim=1)[0].float().mean().item()  # fraction of pixels from the partner
        torch.testing.assert_close(cy.sum(-1), torch.ones(6))
        assert cy[0, 5].item() == pytest.approx(pasted, abs=1e-6)
    args = train.parse_args([])  # both off: untouched
    assert train.mix_batch(x, y, args)[0] is x


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("train_cifar10.py: error: "), lines[0]
    return lines[0]


# argv -> what the one line on stderr must say (it names the option, what was expected, what came)
BAD_ARGUMENTS = {
    "epochs-zero": (["--epochs", "0"], ["--epochs: expected an integer >= 1, got 0"]),
    "lr-nan": (["--lr", "nan"], ["--lr: expected a learning rate > 0, got nan"]),
    "unknown-model": (["--model", "vit_cifar_tiny"],
                      ["--model: expected a registered variant, got 'vit_cifar_tiny'", "close matches:",
                       "vit_cifar_small", "vit_cifar_base"]),
    "unknown-model-far": (["--model", "resnet50"], ["got 'resnet50'; registered: ", "vit_tiny_patch16_224"]),
    "heads-of-variant": (["--embed-dim", "100"],
                         ["--embed-dim: expected a multiple of --num-heads 3 (vit_cifar_small's), got 100"]),
    "heads-given": (["--embed-dim", "64", "--num-heads", "3"], ["expected a multiple of --num-heads 3, got 64"]),
    "dim-of-variant": (["--num-heads", "5"], ["multiple of --num-heads 5, got 192 (vit_cifar_small's)"]),
    "patch": (["--patch-size", "5"], ["--patch-size: expected a divisor of the 32 px images, got 5"]),
    "device": (["--device", "gpu", "--synthetic", "8"], ["--device: expected cpu, cuda or cuda:N, got 'gpu'"]),
    "batch-too-big": (["--synthetic", "8", "--batch-size", "16", "--device", "cpu"],
                      ["--batch-size: expected at most 8", "got 16"]),
    "mixed-sides": (["--mixed-resolution", "16,30"],
                    ["--mixed-resolution: expected comma-separated sides that are multiples of the patch size 4"]),
    "mixed-mixup": (["--mixed-resolution", "16,32", "--mixup", "0.8"], ["no --mixup/--cutmix with it"]),
}


@pytest.mark.parametrize("argv, expected", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_give_one_line_and_exit_2(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert e.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "o").exists()


def test_resume_of_a_missing_checkpoint_gives_one_line(tmp_path, capsys):
    for folder, expected in [(tmp_path / "missing", "which does not exist"),
                             (tmp_path, "expected last.pt in")]:  # a folder without a checkpoint
        with pytest.raises(SystemExit) as e:
            train.main(["--resume", str(folder), "--synthetic", "8"])
        assert e.value.code == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "--resume: " in line and str(folder) in line and expected in line, line
    (tmp_path / "last.pt").write_bytes(b"")  # the state without its weights
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path), "--synthetic", "8"])
    assert "expected last.safetensors in" in _one_error_line(capsys.readouterr().err)


def test_cuda_device_where_there_is_none_gives_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        train.main(["--device", "cuda", "--synthetic", "8"])
    assert e.value.code == 2
    assert "--device: expected cpu here (CUDA is not available), got 'cuda'" in _one_error_line(capsys.readouterr().err)


def _run_script(args, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTVIT_BACKEND", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=ROOT, **env_changes)
    return subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True, timeout=300, env=env)


def test_triton_backend_where_triton_cannot_run_gives_one_line(tmp_path):
    # Under pytest TRITON_INTERPRET=1 makes triton run anywhere; a fresh process without it is a
    # CPU machine as users have it, where fastvit.backend says the kernels cannot run.
    res = _run_script(["--backend", "triton", "--device", "cpu", "--synthetic", "8", "--batch-size", "4",
                       "--out", str(tmp_path / "o")], TRITON_INTERPRET="0")
    assert res.returncode == 2, res.stderr
    line = _one_error_line(res.stderr)
    assert "--backend: expected sdpa or eager on cpu" in line and "got 'triton'" in line, line
    assert "compute capability >= 8.0" in line and "TRITON_INTERPRET=1" in line
    assert not (tmp_path / "o").exists()


def test_every_option_has_help_and_shows_its_default_once():
    parser = train.build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {"model", "epochs", "weight_decay", "warmup_epochs", "label_smoothing", "seed", "device"} <= \
        {a.dest for a in options}
    for a in options:
        assert a.help and a.help.strip(), f"{a.option_strings[0]} has no help text"
        formatter = parser.formatter_class(prog=parser.prog)  # this option's entry in --help, alone
        formatter.add_argument(a)
        entry = " ".join(formatter.format_help().split())  # undo the line wrapping
        if a.nargs == 0 or a.default is None:  # a flag, or an option whose help says what happens without it
            assert entry.count("default") <= 1, entry
        else:
            assert f"(default: {a.default})" in entry and entry.count("default") == 1, entry
        if a.dest == "device":
            assert entry.count("default") == 1 and "cuda:LOCAL_RANK if CUDA is available, else cpu" in entry
    text = " ".join(parser.format_help().split())
    assert "--epochs EPOCHS epochs of the learning-rate schedule (default: 200)" in text  # as a user sees it


def test_default_data_folder_is_what_the_readme_extracts_to():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Training on CIFAR-10"):]
    extract = [line for line in section.splitlines() if "tar -xzf cifar-10-python.tar.gz" in line]
    assert extract, "the README's training section has no extraction command"
    folder = extract[0].split(" -C ")[1].split()[0]
    assert train.parse_args([]).data == folder
    # the smoke command needs no data set and its arguments are accepted
    smoke = section[section.index("python examples/train_cifar10.py --synthetic"):]
    smoke = smoke[:smoke.index("```")].split("#")[0].replace("\\\n", " ").split()
    args = train.parse_args(smoke[2:])
    assert args.synthetic and args.synthetic >= args.batch_size


def test_missing_data_folder_says_where_to_put_the_files(tmp_path):
    res = _run_script(["--data", str(tmp_path / "nowhere")])
    assert res.returncode == 2, res.stderr
    line = _one_error_line(res.stderr)
    assert "CIFAR-10 not found" in line and "data_batch_1" in line and "--synthetic" in line
    assert "cifar-10-batches-py" in line and "downloads nothing" in line
