"""solutions/train.py, each piece in isolation against PyTorch's own (stated tolerances), then the
loop: resuming bit-identically, atomic and validated checkpoints, DDP under torchrun, and the
shipped checkpoints reproducing their stated validation loss in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from solutions import train as T

ROOT = Path(__file__).resolve().parent.parent
TINY = {"vocab_size": 64, "dim": 16, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 32, "max_seq_len": 32,
        "tie_embeddings": True}
TINY_TRAIN = {"seed": 3, "batch_size": 2, "block_size": 16, "total_steps": 6, "warmup_steps": 2, "eval_every": 3,
              "eval_windows": 4, "checkpoint_every": 2}


def tokens(n=3000, seed=0):
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def tiny_config(**train):
    return {"name": "tiny", "model": dict(TINY), "train": {**TINY_TRAIN, **train}}


# ---------------------------------------------------------------------------- pieces

def test_get_batch_windows_are_shifted_and_reproducible():
    stream = torch.arange(1000)
    x, y = T.get_batch(stream, 5, 8, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # consecutive ids: the target is the next token
    x2, _ = T.get_batch(stream, 5, 8, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)
    edge, _ = T.get_batch(torch.arange(9), 50, 8, torch.Generator().manual_seed(0))
    assert torch.equal(edge, torch.arange(8).expand(50, 8))  # the only window that fits
    with pytest.raises(ValueError, match="block_size \\+ 1"):
        T.get_batch(torch.arange(8), 1, 8, torch.Generator())


def test_cross_entropy_matches_torch_including_ignore_index_and_huge_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    targets = torch.randint(0, 11, (3, 5), generator=g)
    targets[0, :2] = -100
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert torch.allclose(T.cross_entropy(logits, targets), expected, atol=1e-6)
    huge = logits * 1000
    assert torch.allclose(T.cross_entropy(huge, targets), F.cross_entropy(huge.reshape(-1, 11), targets.reshape(-1)),
                          rtol=1e-6)


def test_adamw_equals_torch_adamw_after_100_steps():
    """Fed the same gradients, 100 steps apart by float32 rounding only (< 1e-6); and along a real
    training run (each optimiser's own gradients), still equal losses to 1e-5."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 32, generator=g), torch.randn(32, generator=g)]
    params = [[torch.nn.Parameter(t.clone()) for t in start] for _ in range(2)]
    groups = lambda ps: [{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}]  # noqa: E731
    ours = T.AdamW(groups(params[0]), lr=3e-3, betas=(0.9, 0.95))
    theirs = torch.optim.AdamW(groups(params[1]), lr=3e-3, betas=(0.9, 0.95))
    for _ in range(100):
        grads = [torch.randn(t.shape, generator=g) * 0.1 for t in start]
        for ps, opt in zip(params, (ours, theirs)):
            for p, grad in zip(ps, grads):
                p.grad = grad.clone()
            opt.step()
    worst = max((a - b).abs().max().item() for a, b in zip(*params))
    assert worst < 1e-6, worst

    models = [T.build_model(TINY, 0) for _ in range(2)]
    optimizers = [T.AdamW(T.decay_groups(models[0], 0.1), lr=3e-3, betas=(0.9, 0.95)),
                  torch.optim.AdamW(T.decay_groups(models[1], 0.1), lr=3e-3, betas=(0.9, 0.95))]
    stream, batches = tokens(), torch.Generator().manual_seed(0)
    for _ in range(100):
        x, y = T.get_batch(stream, 2, 16, batches)
        losses = []
        for model, opt in zip(models, optimizers):
            loss = T.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-5


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": -1.0}, "lr must be >= 0"), ({"betas": (0.9, 1.0)}, "betas"), ({"eps": 0.0}, "eps > 0"),
])
def test_adamw_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T.AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_lr_schedule_shape():
    lr = lambda s: T.lr_at(s, 1.0, 10, 110, 0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0) and lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55) and lr(110) == lr(500) == pytest.approx(0.1)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 120))


def test_clip_grad_norm_matches_torch():
    g = torch.Generator().manual_seed(0)
    for max_norm in (0.1, 1.0, 100.0):
        grads = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in grads]
        for p, t in zip(params, grads):
            p.grad = t.clone()
        torch_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        clipped, norm = T.clip_grad_norm(grads, max_norm)
        assert torch.allclose(norm, torch_norm, atol=1e-6)
        for p, c in zip(params, clipped):
            assert torch.allclose(p.grad, c, atol=1e-7)


# ---------------------------------------------------------------------------- the loop and checkpoints

def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    stream, val = tokens(), tokens(500, 1)
    straight = T.train(tiny_config(), tmp_path / "a", progress=False, train_tokens=stream, val_tokens=val)
    T.train(tiny_config(), tmp_path / "b", stop_at=3, progress=False, train_tokens=stream, val_tokens=val)
    resumed = T.train(tiny_config(), tmp_path / "b", resume=True, progress=False, train_tokens=stream, val_tokens=val)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["log"]["loss"] == resumed["log"]["loss"] and straight["log"]["val_loss"] == resumed["log"]["val_loss"]
    moe = tiny_config()
    moe["model"].update(n_experts=4, top_k=2)
    runs = [T.train(moe, tmp_path / f"moe{i}", progress=False, train_tokens=stream, val_tokens=val) for i in range(2)]
    assert runs[0]["log"]["loss"] == runs[1]["log"]["loss"]  # same seed, same numbers


def test_a_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    T.save_checkpoint(path, {"step": 1, "model_config": {}, "train_config": {}})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(T.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        T.save_checkpoint(path, {"step": 2, "model_config": {}, "train_config": {}})
    monkeypatch.undo()
    assert T.load_checkpoint(path)["step"] == 1


def test_corrupt_mismatched_and_missing_checkpoints_get_clear_errors(tmp_path):
    stream, val = tokens(), tokens(500, 1)
    T.train(tiny_config(total_steps=3, checkpoint_every=3), tmp_path, progress=False, train_tokens=stream, val_tokens=val)
    other = tiny_config(total_steps=3)
    other["model"]["n_layers"] = 3
    with pytest.raises(T.CheckpointError, match=r"model\.n_layers: checkpoint 2, config 3.*Resume with the config"):
        T.train(other, tmp_path, resume=True, progress=False, train_tokens=stream, val_tokens=val)
    changed_lr = tiny_config(total_steps=3, max_lr=1.0)
    with pytest.raises(T.CheckpointError, match=r"train\.max_lr"):
        T.train(changed_lr, tmp_path, resume=True, progress=False, train_tokens=stream, val_tokens=val)
    T.train(tiny_config(total_steps=3, eval_every=1), tmp_path, resume=True, progress=False,
            train_tokens=stream, val_tokens=val)  # how often to evaluate may change
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(T.CheckpointError, match="corrupt or truncated"):
        T.load_checkpoint(tmp_path / "last.pt")
    with pytest.raises(FileNotFoundError, match="without --resume"):
        T.load_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize("train, message", [
    ({"learning_rate": 1e-3}, "unknown training setting"),
    ({"warmup_steps": 10, "total_steps": 10}, "below total_steps"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr <= max_lr"),
    ({"renamed_copies": -1}, "renamed_copies must be an int >= 0"),
    ({"repeat_drill_tokens": 0.5}, "repeat_drill_tokens must be an int >= 0"),
])
def test_bad_training_configs(train, message):
    with pytest.raises(ValueError, match=message):
        T.check_train_config(train)


def test_cli_reports_a_wrong_resume_without_a_traceback(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(total_steps=3)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "solutions.train", "--config", str(config), "--out", str(tmp_path / "run"),
                          "--resume", "--threads", "1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "no checkpoint" in run.stderr and "without --resume" in run.stderr


def _losses(path):
    return torch.load(path, weights_only=True)["log"]["loss"]


def test_torchrun_ddp_matches_one_process_with_gradient_accumulation(tmp_path):
    """2 processes (gloo) x 1 micro-batch each = 1 process x 2 accumulated micro-batches, same global batch."""
    config = tiny_config(total_steps=4, grad_accum=2, checkpoint_every=4, eval_every=4)
    config["model"].update(vocab_size=4096, n_experts=4, top_k=2)  # the course tokenizer's ids; MoE: unused experts
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = ["-m", "solutions.train", "--config", str(path), "--threads", "1", "--device", "cpu"]
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          *common, "--out", str(tmp_path / "two")], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = _losses(tmp_path / "one" / "last.pt"), _losses(tmp_path / "two" / "last.pt")
    assert len(one) == len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5, (one, two)


def test_a_rerun_gives_the_same_bits(tmp_path):
    config = tmp_path / "tiny.json"
    run_config = {**tiny_config(), "export": str(tmp_path / "export")}
    run_config["model"]["vocab_size"] = 4096  # the CLI trains on the course corpus
    config.write_text(json.dumps(run_config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    digests = []
    for run in ("a", "b"):
        done = subprocess.run([sys.executable, "-m", "solutions.train", "--config", str(config), "--out",
                               str(tmp_path / run)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        state = torch.load(tmp_path / run / "last.pt", weights_only=True)["model"]
        digests.append({k: v.numpy().tobytes() for k, v in state.items()})
    assert digests[0] == digests[1]
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["val_loss"] > 0 and exported["params"] > 0


# ---------------------------------------------------------------------------- the shipped checkpoints

def test_shipped_checkpoints_are_in_the_manifest_and_small():
    from data import CHECKPOINT_NAMES, checkpoint_dir
    from data.manifest import load_manifest, verify

    manifest = load_manifest()
    total = 0
    for name in CHECKPOINT_NAMES:
        for file in ("model.safetensors", "config.json", "log.json"):
            key = f"checkpoints/{name}/{file}"
            assert key in manifest, key
            total += manifest[key]["bytes"]
        stated = json.loads((checkpoint_dir(name) / "config.json").read_text()).get("val_loss")
        assert manifest[f"checkpoints/{name}/model.safetensors"].get("val_loss") == stated
    assert verify([k for k in manifest if k.startswith("checkpoints/")]) == []
    assert total < 30 * 2**20, f"checkpoints take {total / 2**20:.1f} MiB"


def test_each_shipped_checkpoint_was_trained_with_its_run_config():
    """A checkpoint is declared once, in solutions/configs/<name>.json: what it was trained with
    (config.json's model and training settings, defaults filled in) is that file's. Changing a
    recipe means training and exporting the checkpoint again."""
    from data import PRETRAINED_CHECKPOINTS, checkpoint_dir

    for name in PRETRAINED_CHECKPOINTS:
        declared = T.read_config(ROOT / "solutions" / "configs" / f"{name}.json")
        trained = json.loads((checkpoint_dir(name) / "config.json").read_text())
        assert trained["model"] == declared["model"], name
        assert T.check_train_config(trained["train"]) == declared["train"], (
            f"{name}: solutions/configs/{name}.json differs from the settings the shipped checkpoint was trained "
            f"with; retrain and export it (python -m solutions.train --config solutions/configs/{name}.json)")


def test_shipped_checkpoints_reproduce_their_validation_loss_in_a_fresh_process():
    """A fresh process loads each pretrained checkpoint with data.load_checkpoint and measures the
    loss export measured on the stored weights (64 windows spread over the validation stream; the
    full loss takes 8x longer and checks nothing more about loading)."""
    script = (
        "import json, torch\n"
        "from data import PRETRAINED_CHECKPOINTS, checkpoint_dir, load_checkpoint\n"
        "from solutions.model import LlamaConfig, Transformer\n"
        "from solutions.train import corpus_tokens, evaluate\n"
        "torch.set_num_threads(1)\n"
        "_, val = corpus_tokens()\n"
        "out = {}\n"
        "for name in PRETRAINED_CHECKPOINTS:\n"
        "    cfg, state = load_checkpoint(name)\n"
        "    model = Transformer(LlamaConfig(**cfg)); model.load_state_dict(state)\n"
        "    meta = json.loads((checkpoint_dir(name) / 'config.json').read_text())\n"
        "    out[name] = evaluate(model, val, meta['train']['block_size'], meta['val_spot_check']['windows'])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    from data import checkpoint_dir
    for name, loss in measured.items():
        meta = json.loads((checkpoint_dir(name) / "config.json").read_text())
        assert meta["val_spot_check"]["windows"] == T.SPOT_CHECK_WINDOWS
        assert abs(loss - meta["val_spot_check"]["loss"]) < 1e-4, (name, loss, meta["val_spot_check"])
    stated = {name: json.loads((checkpoint_dir(name) / "config.json").read_text())["val_loss"] for name in measured}
    # the 0.9M draft trails both 3.9M-active models (which of those two wins is chapter 06's to show, not a test's)
    assert max(stated["moe"], stated["dense"]) < stated["draft"]


# ------------------------------------------------------------------------------ the copying probe

def test_name_mentions_finds_first_and_repeated_names_at_token_starts():
    from data import course_tokenizer
    from solutions.train import name_mentions

    enc = course_tokenizer()
    story = "Once there was a girl named Mia. Mia had a dog called Pip. Pip liked Mia. Leo came too."
    ids, first, repeat = name_mentions(enc, story, {"Mia", "Pip", "Leo"}, 512)
    assert [enc.decode(ids[t:t + 1]).strip() for t in first] == ["Mia", "Pip", "Leo"]
    assert [enc.decode(ids[t:t + 1]).strip() for t in repeat] == ["Mia", "Pip", "Mia"]
    _, first_short, repeat_short = name_mentions(enc, story, {"Mia", "Pip", "Leo"}, first[0] + 1)
    assert first_short == first[:1] and repeat_short == []  # only the first "Mia" fits


class _Copier(torch.nn.Module):
    """An oracle that copies: it predicts the next token for sure when that token is already in
    its context, and knows nothing otherwise."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens):
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], self.vocab)
        for b in range(tokens.shape[0]):
            for t in range(1, tokens.shape[1]):
                if tokens[b, t] in tokens[b, :t]:
                    logits[b, t - 1, tokens[b, t]] = 20.0
        return logits


class _Uniform(_Copier):
    def forward(self, tokens):
        return torch.zeros(tokens.shape[0], tokens.shape[1], self.vocab)


def test_the_copying_probe_tells_a_copier_from_a_guesser():
    import math

    from data import course_tokenizer
    from solutions.train import copying_probe

    enc = course_tokenizer()
    stories = ["Once there was a girl named Mia. Mia had a dog called Pip. Pip liked Mia.",
               "A boy named Leo lived by the sea. Every day Leo swam."]
    copier = copying_probe(_Copier(enc.n_vocab), enc, stories, {"Mia", "Pip", "Leo"})
    assert copier["repeat_top5"] == 1.0 and copier["repeat_logprob"] > copier["first_logprob"] + 5
    assert (copier["first_mentions"], copier["repeat_mentions"], copier["stories"]) == (3, 4, 2)
    uniform = copying_probe(_Uniform(enc.n_vocab), enc, stories, {"Mia", "Pip", "Leo"})
    assert uniform["first_logprob"] == uniform["repeat_logprob"] == round(-math.log(enc.n_vocab), 4)


def test_renamed_copies_give_every_character_a_new_name_consistently():
    import random
    import re

    from data import corpus

    story = ("Once upon a time, in a town called Colddale, there lived a boy named Remy. His neighbor, "
             "Doctor Knight, had a cat named Sparky. Remy visited Doctor Knight in Colddale. Sparky slept. "
             "The Moon was bright.")
    renamed = corpus.rename_characters(story, random.Random(0))
    for old in ("Colddale", "Remy", "Knight", "Sparky"):
        assert old not in renamed
    assert "Doctor" in renamed and "The Moon was bright." in renamed  # titles and ordinary words stay
    names = re.findall(r"named (\w+)\. His neighbor, Doctor (\w+),", renamed)[0]
    assert renamed.count(names[0]) == 2 and renamed.count(names[1]) == 2  # the same new name each time
    # the copies are seeded per story and copy: the same everywhere, different from copy to copy
    copies = corpus.renamed_copies([story, story], 2)
    assert copies == corpus.renamed_copies([story, story], 2)
    assert len(copies) == 4 and len(set(copies)) == 4
    assert len({corpus.invented_name(random.Random(i)) for i in range(2000)}) > 1900  # names are rarely reused


def test_repeat_drills_say_a_passage_twice_after_a_separator():
    from solutions.train import repeat_drills

    tokens = list(range(100, 1100))
    drills = repeat_drills(tokens, 500, separator=7)
    assert len(drills) >= 500 and drills == repeat_drills(tokens, 500, separator=7)
    starts = [i for i, t in enumerate(drills) if t == 7]
    assert starts[0] == 0
    for start, end in zip(starts, starts[1:] + [len(drills)]):
        ids = drills[start + 1:end]
        half = len(ids) // 2
        assert len(ids) % 2 == 0 and 12 <= half <= 60 and ids[:half] == ids[half:]
        assert ids[:half] == list(range(ids[0], ids[0] + half))  # a contiguous passage of the stream


def test_the_training_stream_appends_renamed_copies_and_drills_and_keeps_validation_plain():
    plain_train, plain_val = T.corpus_tokens()
    train, val = T.corpus_tokens(renamed_copies=1, repeat_drill_tokens=10_000)
    assert torch.equal(val, plain_val) and torch.equal(train[:len(plain_train)], plain_train)
    extra = len(train) - len(plain_train)
    assert len(plain_train) < extra - 10_000 < 1.3 * len(plain_train)  # one renamed copy, a little longer
