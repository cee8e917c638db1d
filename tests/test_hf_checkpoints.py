"""Hugging Face checkpoints load into the course model and give transformers' logits.

Tiny random Llama and Mixtral models are built with ``transformers`` (a test-only
dependency, offline: configs in code, no downloads), saved with ``save_pretrained`` as one
safetensors file or sharded with an index, loaded with :func:`load_hf_checkpoint`, which
does not import transformers, and compared on the same tokens: logits within 1e-4.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from solutions.model import LlamaConfig, Transformer, load_hf_checkpoint, param_count

transformers = pytest.importorskip("transformers")

TOL = 1e-4
COMMON = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4)


def llama(**overrides):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**(COMMON | dict(num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-6) | overrides))
    return transformers.LlamaForCausalLM(config).eval()


def mixtral(**overrides):
    torch.manual_seed(1)
    config = transformers.MixtralConfig(**(COMMON | dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2) | overrides))
    return transformers.MixtralForCausalLM(config).eval()


def randomise_norms(model):
    """Norm gains start at 1 in transformers: make them random so that a swapped norm shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape))
    return model


def sharpen_attention(model):
    """Queries and keys x4: attention far from uniform, so that positions (RoPE) matter to the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4)
    return model


def same_logits(theirs, ours, seq=11):
    tokens = torch.randint(0, theirs.config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = theirs(tokens).logits, ours(tokens)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < TOL, (a - b).abs().max().item()


# Llama 3.1's RoPE scaling, with a pretraining context of 16 positions so that 11 tokens already
# meet every regime: kept, interpolated and smoothly mixed frequencies
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

CASES = {
    "llama": lambda: llama(),
    "llama 3.1 RoPE scaling": lambda: sharpen_attention(llama(rope_parameters=dict(LLAMA3_ROPE), max_position_embeddings=64)),
    "llama MQA, tied embeddings": lambda: llama(num_key_value_heads=1, tie_word_embeddings=True),
    "llama MHA, theta 10000": lambda: llama(num_key_value_heads=4, rope_theta=10000.0),
    "mixtral": lambda: mixtral(),
    "mixtral top-1 of 3": lambda: mixtral(num_local_experts=3, num_experts_per_tok=1),
}


@pytest.mark.parametrize("sharded", [False, True], ids=["one file", "sharded"])
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, sharded, tmp_path):
    theirs = randomise_norms(CASES[name]())
    theirs.save_pretrained(tmp_path, **({"max_shard_size": "20KB"} if sharded else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    ours = load_hf_checkpoint(tmp_path)
    same_logits(theirs, ours)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert param_count(ours.cfg)[0] == sum(p.numel() for p in theirs.parameters())


def test_the_fused_expert_layout_of_transformers_5_loads_too(tmp_path):
    """transformers 5 holds a layer's experts as two fused tensors (gate_up_proj, down_proj);
    save_pretrained writes the classic per-expert names, but a file of the in-memory names loads as well."""
    theirs = randomise_norms(mixtral())
    state = theirs.state_dict()
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(theirs.config.to_json_string())
    same_logits(theirs, load_hf_checkpoint(tmp_path))


def test_classic_per_expert_names_are_what_save_pretrained_writes(tmp_path):
    mixtral().save_pretrained(tmp_path)
    names = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in names


def test_loading_does_not_import_transformers(tmp_path):
    llama().save_pretrained(tmp_path)
    code = ("import sys; from solutions.model import load_hf_checkpoint; "
            f"m = load_hf_checkpoint({str(tmp_path)!r}); assert 'transformers' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert out.stdout.strip() == "ok", out.stderr


def test_config_from_hf_reads_every_field():
    theirs = mixtral(rms_norm_eps=1e-6, tie_word_embeddings=True)
    cfg = LlamaConfig.from_hf(json.loads(theirs.config.to_json_string()))
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim) == (32, 2, 4, 2, 40)
    assert (cfg.n_experts, cfg.top_k, cfg.norm_eps, cfg.tie_embeddings) == (4, 2, 1e-6, True)
    assert cfg.rope_theta == theirs.config.rope_parameters["rope_theta"]


def test_llama3_scaling_is_read_from_both_config_layouts_and_changes_the_logits(tmp_path):
    theirs = randomise_norms(CASES["llama 3.1 RoPE scaling"]())
    theirs.save_pretrained(tmp_path)
    ours = load_hf_checkpoint(tmp_path)
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
    assert ours.cfg.rope_scaling == scaling and ours.cfg.rope_theta == 500000.0
    # Meta's Llama 3.1 / 3.2 config.json (transformers 4): rope_theta beside rope_scaling
    legacy = {k: v for k, v in json.loads((tmp_path / "config.json").read_text()).items() if k != "rope_parameters"}
    legacy |= {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling}}
    assert LlamaConfig.from_hf(legacy).rope_scaling == scaling
    # without the scaling the same weights give other logits: the comparison above can fail
    plain = Transformer(LlamaConfig(**{**vars(ours.cfg), "rope_scaling": None})).eval()
    plain.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (plain(tokens) - ours(tokens)).abs().max().item() > 100 * TOL


def test_llama3_frequencies_keep_the_fast_pairs_and_divide_the_slow_ones():
    from solutions.model import llama3_inv_freq

    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    plain = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128)
    scaled = llama3_inv_freq(128, 500000.0, scaling)
    wavelength = 2 * torch.pi / plain
    assert torch.equal(scaled[wavelength < 8192 / 4], plain[wavelength < 8192 / 4])
    assert torch.allclose(scaled[wavelength > 8192], plain[wavelength > 8192] / 8)
    middle = (wavelength >= 8192 / 4) & (wavelength <= 8192)
    assert middle.any() and ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8)).all()


# ------------------------------------------------------------------------------ bad input

def test_an_unsupported_rope_type_and_a_bad_scaling_are_named():
    config = json.loads(llama().config.to_json_string())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ValueError, match="rope_type 'yarn'.*'llama3'"):
        LlamaConfig.from_hf(config)
    with pytest.raises(ValueError, match="rope_scaling must be None or a dict of exactly factor"):
        LlamaConfig(vocab_size=61, dim=32, n_layers=1, n_heads=4, hidden_dim=40, rope_scaling={"factor": 8.0})
    bad = {"factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 16}
    with pytest.raises(ValueError, match="low_freq_factor < high_freq_factor"):
        LlamaConfig(vocab_size=61, dim=32, n_layers=1, n_heads=4, hidden_dim=40, rope_scaling=bad)


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path):
    llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Qwen3ForCausalLM.*supported architectures: LlamaForCausalLM, MixtralForCausalLM"):
        load_hf_checkpoint(tmp_path)


def test_a_missing_tensor_is_named(tmp_path):
    llama().save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no tensor for layers\.1\.self_attn\.v_proj\.weight \(expected shape \(16, 32\)\)"):
        load_hf_checkpoint(tmp_path)


def test_a_mis_shaped_tensor_names_both_shapes(tmp_path):
    llama().save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].T.contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.up_proj\.weight has shape \(32, 40\).*expected \(40, 32\)"):
        load_hf_checkpoint(tmp_path)


def test_an_unknown_tensor_is_named(tmp_path):
    llama().save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="q_norm"):
        load_hf_checkpoint(tmp_path)


def test_a_folder_without_weights_says_so(tmp_path):
    llama().config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_the_course_model_round_trips_through_transformers(tmp_path):
    """The other direction: the course model's state dict, renamed, is a LlamaForCausalLM's."""
    cfg = LlamaConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=40)
    ours = Transformer(cfg).eval()
    theirs = llama(num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
    renamed = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(renamed)
    same_logits(theirs, ours)
