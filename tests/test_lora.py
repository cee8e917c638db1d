"""Chapter 09's reference (solutions/lora.py) against Hugging Face's PEFT, offline.

Tiny random ``LlamaForCausalLM`` models are built with ``transformers`` (configs in code, as in
tests/test_hf_checkpoints.py), loaded into the course model with ``load_hf_checkpoint``, and
given a LoRA or DoRA adapter by PEFT with ``init_lora_weights=False``: a random, non-zero
``lora_B`` (an adapter with B = 0 changes nothing, so agreeing with it proves nothing; each test
checks that the adapter moves the logits by far more than the tolerance). PEFT writes the
adapter folder with ``save_pretrained`` into ``tmp_path``; the course's ``load_peft_adapter``
reads it. Logits agree within :data:`TOL`; merged, unmerged and adapted outputs agree with each
other and with PEFT's ``merge_and_unload`` within :data:`TOL`; unmerging gives back the base
weights within :data:`WEIGHT_TOL`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from autograder.core import lookup, run
from solutions.lora import (LoRALinear, TrainableTokens, count_parameters, dora_magnitude, dora_merge, inject_lora,
                            lora_init, lora_parameter_count, load_peft_adapter, merge_and_unload, merge_lora, peft_key,
                            train_tokens, training_memory, unmerge_lora)
from solutions.model import LlamaConfig, Transformer, load_hf_checkpoint, param_count

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOL = 1e-4  # logits of two implementations of a 2-layer float32 model (as tests/test_hf_checkpoints.py)
WEIGHT_TOL = 1e-6  # a float32 weight after W + d - d
COMMON = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4)


def llama(**overrides):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**(COMMON | dict(num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-6)
                                         | overrides))
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm gains: a swapped norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape))
    return model


def tokens(vocab=61, seq=11):
    return torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(5))


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return (out.logits if hasattr(out, "logits") else out).float()


def biggest(a, b):
    return (a - b).abs().max().item()


def move_magnitudes(model):
    """DoRA's magnitudes start at the weight norms, which makes DoRA equal to LoRA: move them, as training would."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.rand(p.shape))


def peft_pair(tmp_path, lora_kwargs, **overrides):
    """A transformers model with a PEFT adapter, and the course model with the same base weights and
    that adapter loaded from PEFT's own files. Returns (theirs, ours, base logits)."""
    theirs = llama(**overrides)
    theirs.save_pretrained(tmp_path / "base")
    ours = load_hf_checkpoint(tmp_path / "base")
    x = tokens()
    base = logits(theirs, x)
    torch.manual_seed(1)
    config = peft.LoraConfig(init_lora_weights=False, **lora_kwargs)  # B random, not 0
    theirs = peft.get_peft_model(theirs, config).eval()
    move_magnitudes(theirs)
    theirs.save_pretrained(tmp_path / "adapter")
    load_peft_adapter(ours, tmp_path / "adapter")
    return theirs, ours.eval(), base


ADAPTERS = {
    "LoRA q_proj, v_proj": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "LoRA all-linear": dict(r=4, lora_alpha=16, target_modules="all-linear"),
    "LoRA r=1, alpha=3 (alpha / r not an integer)": dict(r=1, lora_alpha=3, target_modules=["o_proj", "down_proj"]),
    "rsLoRA": dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True),
    "DoRA all-linear": dict(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True),
    "DoRA on q, k, v": dict(r=2, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], use_dora=True),
}
MODELS = {
    "GQA": dict(),
    "MQA, tied embeddings": dict(num_key_value_heads=1, tie_word_embeddings=True),
}


# ------------------------------------------------------------------------------ PEFT's adapters


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_peft_adapter_loads_and_gives_peft_logits(adapter, model, tmp_path):
    theirs, ours, base = peft_pair(tmp_path, ADAPTERS[adapter], **MODELS[model])
    x = tokens()
    want, got = logits(theirs, x), logits(ours, x)
    assert biggest(want, base) > 100 * TOL, "the adapter changes nothing: this test would prove nothing"
    assert biggest(want, got) < TOL, biggest(want, got)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_merged_unmerged_and_peft_merge_and_unload_agree(adapter, tmp_path):
    theirs, ours, _ = peft_pair(tmp_path, ADAPTERS[adapter])
    x = tokens()
    adapted = logits(ours, x)
    layers = [m for m in ours.modules() if isinstance(m, LoRALinear)]
    before = [m.base_layer.weight.detach().clone() for m in layers]
    for m in layers:
        m.merge()
    merged = logits(ours, x)
    for m in layers:
        m.unmerge()
    unmerged = logits(ours, x)
    assert biggest(adapted, merged) < TOL and biggest(adapted, unmerged) < TOL
    assert max(biggest(w, m.base_layer.weight) for w, m in zip(before, layers)) < WEIGHT_TOL
    plain = merge_and_unload(ours)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert sorted(plain.state_dict()) == sorted(Transformer(plain.cfg).state_dict())
    assert biggest(logits(theirs.merge_and_unload(), x), logits(plain, x)) < TOL


def test_the_adapter_files_peft_writes_are_the_names_peft_key_reads(tmp_path):
    peft_pair(tmp_path, ADAPTERS["DoRA all-linear"], tie_word_embeddings=True)
    names = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    ours = load_hf_checkpoint(tmp_path / "base")
    load_peft_adapter(ours, tmp_path / "adapter")
    state = ours.state_dict()
    assert len(names) == 2 * 14 + 14  # A, B and a magnitude for 7 linear layers in 2 layers
    for name, tensor in names.items():
        assert torch.equal(state[peft_key(name)], tensor), name


def test_the_course_model_injected_loads_into_peft(tmp_path):
    """The other direction: the course's adapter, trained a little (B non-zero), renamed with PEFT's
    prefix, is a PeftModel's adapter; both give the same logits."""
    theirs = llama()
    theirs.save_pretrained(tmp_path / "base")
    ours = load_hf_checkpoint(tmp_path / "base")
    torch.manual_seed(0)
    inject_lora(ours, "all-linear", 4, 8)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.normal_(0, 0.2)
    adapter = {("base_model.model." + (k if k.startswith("lm_head") else "model." + k)): v
               for k, v in ours.state_dict().items() if "lora_" in k}
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    peft.set_peft_model_state_dict(theirs, adapter)
    x = tokens()
    assert biggest(logits(theirs.eval(), x), logits(ours.eval(), x)) < TOL


def test_injection_counts_what_peft_counts():
    for tied in (False, True):
        theirs = llama(tie_word_embeddings=tied)
        cfg = LlamaConfig.from_hf(json.loads(theirs.config.to_json_string()))
        ours = Transformer(cfg)
        counts = inject_lora(ours, ["q_proj", "v_proj", "down_proj"], 4, 8)
        theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                                 "down_proj"]))
        assert counts == theirs.get_nb_trainable_parameters()
        assert counts[1] == param_count(cfg)[0] + counts[0]


# ------------------------------------------------------------------------------ one layer, as PEFT's


def peft_layer(base, r, alpha, dropout=0.0, use_dora=False):
    """PEFT's own LoRA layer around a copy of ``base``, with a random B."""
    import copy

    from peft.tuners.lora import Linear

    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=False, use_dora=use_dora)
    return Linear(copy.deepcopy(base), "default", config, r=r, lora_alpha=alpha)


@pytest.mark.parametrize("use_dora", [False, True], ids=["LoRA", "DoRA"])
def test_a_layer_in_training_mode_with_dropout_is_peft_s(use_dora):
    """Dropout masks drawn from the same seed: PEFT drops the input of the adapter path (DoRA: of its
    part beyond the frozen layer), the course multiplies by F.dropout's mask: the same outputs."""
    torch.manual_seed(3)
    base = nn.Linear(12, 7, bias=False)
    theirs = peft_layer(base, 3, 6, dropout=0.3, use_dora=use_dora).train()
    move_magnitudes(theirs)
    ours = LoRALinear(base, 3, 6, dropout=0.3, use_dora=use_dora, init_lora_weights=False).train()
    with torch.no_grad():
        ours.lora_A.weight.copy_(theirs.lora_A["default"].weight)
        ours.lora_B.weight.copy_(theirs.lora_B["default"].weight)
        if use_dora:
            ours.lora_magnitude_vector.copy_(theirs.lora_magnitude_vector["default"].weight)
    x = torch.randn(4, 5, 12)
    torch.manual_seed(9)
    want = theirs(x)
    torch.manual_seed(9)
    got = ours(x)
    assert biggest(want, got) < 1e-5
    assert biggest(want, F.linear(x, base.weight)) > 1e-2


def test_lora_init_draws_what_peft_draws():
    """PEFT: nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5)) and zeros for lora_B."""
    torch.manual_seed(0)
    want = torch.empty(8, 24)
    nn.init.kaiming_uniform_(want, a=math.sqrt(5))
    torch.manual_seed(0)
    lora_A, lora_B = lora_init(24, 16, 8)
    assert torch.equal(lora_A, want) and torch.equal(lora_B, torch.zeros(16, 8))
    assert lora_A.abs().max() <= 1 / math.sqrt(24)


def test_an_injected_model_starts_equal_and_trains_only_its_adapters():
    torch.manual_seed(0)
    model = Transformer(LlamaConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=24,
                                    tie_embeddings=True))
    x = torch.randint(0, 50, (2, 7))
    before = logits(model, x)
    inject_lora(model, "all-linear", 2, 4)
    # B = 0: the base model (up to rounding: wrapped projections take Attention's unfused path)
    assert biggest(before, logits(model, x)) < 1e-5
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert p.grad is None and not p.requires_grad, name
        elif "lora_B" in name:
            assert p.grad is not None and p.grad.abs().max() > 0, name  # B learns first ...
        else:
            assert p.grad is not None and p.grad.abs().max() == 0, name  # ... A once B is not 0


def test_train_tokens_trains_only_those_rows_and_keeps_the_head_tied():
    torch.manual_seed(0)
    model = Transformer(LlamaConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=24, tie_embeddings=True))
    before = model.embed_tokens.weight.detach().clone()
    inject_lora(model, "all-linear", 2, 4)
    added = train_tokens(model, [3, 47])
    assert added == 2 * 16 and isinstance(model.lm_head, TrainableTokens)
    assert model.lm_head.trainable_tokens_delta is model.embed_tokens.trainable_tokens_delta
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.0)
    for _ in range(2):
        model(torch.randint(0, 50, (2, 6))).logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.embed_tokens.weight.detach()
    changed = (after - before).abs().amax(dim=1) > 0
    assert changed.nonzero().flatten().tolist() == [3, 47]
    assert torch.equal(model.lm_head.weight, after)  # the head reads the same rows
    assert torch.equal(model.embed_tokens.base_layer.weight, before)  # the frozen table itself is unchanged


# ------------------------------------------------------------------------------ merging


def trained_layer(dtype=torch.float32, out_features=6, in_features=10, r=3, alpha=7.0):
    torch.manual_seed(4)
    base = nn.Linear(in_features, out_features, bias=False).to(dtype)
    layer = LoRALinear(base, r, alpha, init_lora_weights=False)
    base.weight.requires_grad_(False)
    return layer


def test_merge_and_unmerge_keep_the_output_with_a_non_zero_b():
    layer = trained_layer()
    assert layer.lora_B.weight.abs().min() > 0
    x = torch.randn(3, 4, 10)
    base = layer.base_layer.weight.clone()
    adapted = layer(x).detach()
    assert biggest(adapted, F.linear(x, base)) > 1e-2
    merge_lora(layer)
    assert biggest(adapted, layer(x)) < 1e-5 and layer.merged
    unmerge_lora(layer)
    assert biggest(layer.base_layer.weight, base) < WEIGHT_TOL and not layer.merged
    assert biggest(adapted, layer(x)) < 1e-5


def test_merging_twice_or_unmerging_an_unmerged_layer_is_refused():
    layer = trained_layer()
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(layer)
    merge_lora(layer)
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(layer)
    dora = LoRALinear(nn.Linear(4, 3, bias=False), 2, 4, use_dora=True)
    with pytest.raises(ValueError, match="not merged"):
        dora.unmerge()
    dora.merge()
    with pytest.raises(ValueError, match="already merged"):
        dora.merge()


def test_a_bfloat16_weight_is_merged_in_float32_and_rounded_once_as_peft_does():
    layer = trained_layer(torch.bfloat16)
    W = layer.base_layer.weight.clone()
    delta = layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)
    merge_lora(layer)
    assert torch.equal(layer.base_layer.weight, (W.float() + delta).to(torch.bfloat16))
    peft_style = W.clone()
    peft_style += delta  # PEFT's merge: base_layer.weight.data += delta_weight (float32 into bfloat16)
    assert torch.equal(layer.base_layer.weight, peft_style)


def test_dora_merge_gives_the_dora_output_and_unmerges():
    torch.manual_seed(2)
    base = nn.Linear(9, 5, bias=False)
    layer = LoRALinear(base, 2, 4, use_dora=True, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_magnitude_vector.mul_(1.3)
    x = torch.randn(2, 3, 9)
    W = base.weight.detach().clone()
    adapted = layer(x).detach()
    merged_weight = dora_merge(W, layer.lora_A.weight, layer.lora_B.weight, layer.alpha, layer.lora_magnitude_vector)
    assert biggest(F.linear(x, merged_weight), adapted) < 1e-5
    layer.merge()
    assert biggest(layer(x), adapted) < 1e-5
    layer.unmerge()
    assert biggest(base.weight, W) < WEIGHT_TOL


def test_dora_norm_is_per_output_feature_and_detached():
    torch.manual_seed(0)
    W, A, B = torch.randn(5, 8), torch.randn(2, 8, requires_grad=True), torch.randn(5, 2, requires_grad=True)
    n = dora_magnitude(W, A, B, 4.0)
    assert n.shape == (5,) and not n.requires_grad
    assert torch.allclose(n, (W + 2 * B @ A).norm(dim=1))


# ------------------------------------------------------------------------------ errors


def test_injection_errors_say_what_exists():
    model = Transformer(LlamaConfig(vocab_size=20, dim=8, n_layers=1, n_heads=2, hidden_dim=12))
    with pytest.raises(ValueError, match=r"'query' matches no module.*q_proj, k_proj, v_proj, o_proj, gate_proj"):
        inject_lora(model, ["q_proj", "query"], 2, 4)
    with pytest.raises(ValueError, match="mlp is a SwiGLU: LoRA wraps nn.Linear"):
        inject_lora(model, ["mlp"], 2, 4)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing wrapped before the error
    inject_lora(model, ["q_proj"], 2, 4)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        inject_lora(model, "all-linear", 2, 4)
    for r, alpha, match in ((0, 4, "r .* must be an int >= 1"), (2, 0, "alpha must be a number > 0")):
        with pytest.raises(ValueError, match=match):
            LoRALinear(nn.Linear(4, 4), r, alpha)


def test_all_linear_leaves_out_the_head_and_targets_match_after_a_dot():
    moe = Transformer(LlamaConfig(vocab_size=20, dim=8, n_layers=2, n_heads=2, hidden_dim=12, n_experts=3))
    inject_lora(moe, ["gate"], 2, 4)
    wrapped = sorted(n for n, m in moe.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == ["layers.0.mlp.gate", "layers.1.mlp.gate"]  # the routers, not the experts' gate_proj
    dense = Transformer(LlamaConfig(vocab_size=20, dim=8, n_layers=1, n_heads=2, hidden_dim=12))
    inject_lora(dense, "all-linear", 2, 4)
    assert not isinstance(dense.lm_head, LoRALinear) and isinstance(dense.layers[0].mlp.down_proj, LoRALinear)


def saved_adapter(tmp_path, **overrides):
    theirs = llama(**overrides)
    theirs.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False)).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def course_model(**config):
    return Transformer(LlamaConfig(**(dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                           hidden_dim=40) | config)))


def test_an_adapter_of_another_base_model_is_refused_and_the_model_left_unchanged(tmp_path):
    path = saved_adapter(tmp_path, num_hidden_layers=3)
    model = course_model()
    with pytest.raises(ValueError, match=r"layers\.2\.self_attn\.q_proj, which this model does not have"):
        load_peft_adapter(model, path)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    wide = course_model(dim=48, n_heads=4, n_kv_heads=2)
    with pytest.raises(ValueError, match=r"lora_A\.weight has shape \(4, 32\) in the adapter, expected \(4, 48\)"):
        load_peft_adapter(wide, path)


def test_an_adapter_of_another_kind_or_incomplete_is_refused(tmp_path):
    path = saved_adapter(tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    for key, value, match in (("bias", "all", "bias='all'"), ("peft_type", "IA3", "IA3 adapter"),
                              ("auto_mapping", {"base_model_class": "Qwen3ForCausalLM"}, "Qwen3ForCausalLM")):
        (path / "adapter_config.json").write_text(json.dumps(config | {key: value}))
        with pytest.raises(ValueError, match=match):
            load_peft_adapter(course_model(), path)
    (path / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(path / "adapter_model.safetensors"))
    del tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    save_file(tensors, str(path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"no tensor for layers\.1\.self_attn\.v_proj\.lora_B\.weight"):
        load_peft_adapter(course_model(), path)


@pytest.mark.parametrize("name", ["base_model.model.model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.lora_A.weight",
                                  "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
                                  "base_model.model.model.layers.0.self_attn.q_norm.lora_A.weight"])
def test_peft_key_refuses_what_is_no_adapter_tensor(name):
    with pytest.raises(ValueError):
        peft_key(name)


# ------------------------------------------------------------------------------ the checkpoints


def test_correct_rewrites_are_accepted():
    """Other right answers than the reference's code: the checks compare values, not code."""

    def init_by_hand(in_features, out_features, r, generator):
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError("r must be a positive int")
        bound = 1 / math.sqrt(in_features)
        return torch.empty(r, in_features).uniform_(-bound, bound, generator=generator), torch.zeros(out_features, r)

    def linear_with_matmuls(x, weight, lora_A, lora_B, alpha, dropout_mask):
        r = lora_A.shape[0]
        if lora_A.shape[1] != weight.shape[1] or lora_B.shape != (weight.shape[0], r) or x.shape[-1] != weight.shape[1]:
            raise ValueError("shapes do not fit")
        h = x if dropout_mask is None else dropout_mask * x
        return x @ weight.T + (h @ lora_A.T) @ lora_B.T * (alpha / r)

    def key_with_a_regex(name):
        import re

        found = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)", name)
        if not found:
            raise ValueError(name)
        from solutions.model import hf_key

        module = hf_key(found.group(1) + ".weight")
        if module is None:
            raise ValueError(name)
        return module.removesuffix(".weight") + "." + found.group(2)

    for checkpoint, fn in (("09.lora_init", init_by_hand), ("09.lora_linear", linear_with_matmuls),
                           ("09.peft_key", key_with_a_regex)):
        result = run(lookup(checkpoint), fn)
        assert result.passed, result.report()


def test_a_merge_written_as_peft_s_is_accepted():
    """PEFT's merge, W.data += delta (a float32 delta added into the weight's own dtype), rounds once."""
    from tests.catalogue.ch09_lora import via_merge

    def merge(layer):
        if layer.merged:
            raise ValueError("already merged")
        layer.base_layer.weight.data += layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)
        layer.merged = True

    def unmerge(layer):
        if not layer.merged:
            raise ValueError("not merged")
        layer.base_layer.weight.data -= layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)
        layer.merged = False

    result = run(lookup("09.merge"), via_merge(merge, unmerge, "peft_merge"))
    assert result.passed, result.report()


# ------------------------------------------------------------------------------ memory


def test_training_memory_of_llama2_7b():
    llama2_7b = {"vocab_size": 32000, "dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32,
                 "hidden_dim": 11008, "tie_embeddings": False}
    n = param_count(llama2_7b)[0]
    lora = lora_parameter_count(llama2_7b, 16)
    assert (n, lora) == (6_738_415_616, 39_976_960)
    full = training_memory(n, n)
    assert sum(full.values()) == 16 * n
    assert sum(training_memory(n + lora, lora).values()) == 2 * (n + lora) + 14 * lora
    assert count_parameters(nn.Linear(3, 2)) == (8, 8)
