"""Wrong answers to chapter 03's checkpoints, as learners write them.

Helpers a learner has already written correctly (``attention``, ``repeat_kv``,
``apply_rope``, ``causal_mask``) come from the reference, so each entry holds one mistake.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from solutions.attention import attend, attention, project_qkv, repeat_kv
from solutions.layers import apply_rope, causal_mask

from . import mistake

# -------------------------------------------------------------------------- 03.attention


@mistake("03.attention", "scale_d")
def attention_scaled_by_d(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]  # variance argument, misremembered
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "no_scale")
def attention_unscaled(q, k, v, mask):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "softmax_axis")
def attention_softmax_over_queries(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v


@mistake("03.attention", "mask_after_softmax")
def attention_masks_weights(q, k, v, mask):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # rows no longer sum to 1
    return weights @ v


@mistake("03.attention", "mask_zero")
def attention_masks_with_zero(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, 0.0)
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "mask_inverted")
def attention_inverted_mask(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))  # True read as "blocked"
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "own_mask")
def attention_builds_its_own_causal_mask(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "no_mask")
def attention_always_masks(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))  # TypeError when mask is None
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "return_type")
def attention_returns_weights_too(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


@mistake("03.attention", "mutated_input")
def attention_scales_q_in_place(q, k, v, mask):
    q /= math.sqrt(q.shape[-1])  # the caller's queries are scaled too
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "grad_detached")
def attention_detaches_the_weights(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).detach()  # "the weights are only a distribution to read"
    return weights @ v


@mistake("03.attention", "mask_truthy")
def attention_tests_the_mask_for_truth(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask:  # the learner thought `if mask:` asks "is there a mask?"; a tensor of many values cannot answer
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "given_mask")
def attention_views_the_mask_as_q_by_kv(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        # the learner thought the mask is always (q_len, kv_len): a (1, kv_len) padding mask cannot be viewed so
        scores = scores.masked_fill(~mask.view(1, 1, q.shape[-2], k.shape[-2]), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mistake("03.attention", "given_mask")
def attention_indexes_the_mask_as_2d(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        # the learner thought every mask has two axes to put under (batch, heads): a (kv_len,) one has one
        scores = scores.masked_fill(~mask[None, None, :, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


# -------------------------------------------------------------------------- 03.repeat_kv


@mistake("03.repeat_kv", "grouping")
def repeat_kv_with_repeat(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)  # heads 0,1,0,1 instead of 0,0,1,1


@mistake("03.repeat_kv", "grouping")
def repeat_kv_expands_before_the_heads(x, n_rep):
    batch, n_kv_heads, seq, head_dim = x.shape
    x = x[:, None].expand(batch, n_rep, n_kv_heads, seq, head_dim)
    return x.reshape(batch, n_rep * n_kv_heads, seq, head_dim)


@mistake("03.repeat_kv", "grad_detached")
def repeat_kv_through_numpy(x, n_rep):
    return torch.from_numpy(np.repeat(x.detach().numpy(), n_rep, axis=1))  # right values, no gradient


@mistake("03.repeat_kv", "axis")
def repeat_kv_on_the_sequence(x, n_rep):
    return x.repeat_interleave(n_rep, dim=2)


@mistake("03.repeat_kv", "n_rep")
def repeat_kv_to_n_rep_heads(x, n_rep):
    n_kv_heads = x.shape[1]
    return x.repeat_interleave(n_rep // n_kv_heads, dim=1)  # n_rep read as the number of heads


@mistake("03.repeat_kv", "reshape")
def repeat_kv_forgets_the_reshape(x, n_rep):
    batch, n_kv_heads, seq, head_dim = x.shape
    return x[:, :, None, :, :].expand(batch, n_kv_heads, n_rep, seq, head_dim)


# ------------------------------------------------------------------------ 03.gqa_forward


def _projections(x, weights, n_heads, n_kv_heads):
    batch, seq, _ = x.shape
    head_dim = weights["q_proj"].shape[0] // n_heads
    q = F.linear(x, weights["q_proj"]).view(batch, seq, n_heads, head_dim)
    k = F.linear(x, weights["k_proj"]).view(batch, seq, n_kv_heads, head_dim)
    v = F.linear(x, weights["v_proj"]).view(batch, seq, n_kv_heads, head_dim)
    return q, k, v


def _finish(q, k, v, mask, weights, n_heads, n_kv_heads):
    """The right second half, from heads-first q, k, v."""
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
    batch, _, seq, head_dim = out.shape
    return F.linear(out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim), weights["o_proj"])


@mistake("03.gqa_forward", "rope_values")
def gqa_rotates_values(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k, v = apply_rope(q, cos, sin), apply_rope(k, cos, sin), apply_rope(v, cos, sin)
    return _finish(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "rope_keys")
def gqa_rotates_queries_only(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q = apply_rope(q, cos, sin)
    return _finish(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "rope_queries")
def gqa_rotates_keys_only(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    k = apply_rope(k, cos, sin)
    return _finish(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "grouping")
def gqa_cycles_kv_heads(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k, v = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
    n_rep = n_heads // n_kv_heads
    out = attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1), mask)
    batch, _, seq, head_dim = out.shape
    return F.linear(out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim), weights["o_proj"])


@mistake("03.gqa_forward", "split_heads")
def gqa_reshapes_heads_first(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    batch, seq, _, head_dim = q.shape
    q = q.reshape(batch, n_heads, seq, head_dim)  # instead of transpose(1, 2)
    k = k.reshape(batch, n_kv_heads, seq, head_dim)
    v = v.reshape(batch, n_kv_heads, seq, head_dim)
    return _finish(q, k, v, mask, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "merge_heads")
def gqa_merges_heads_without_transpose(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k, n_rep), repeat_kv(v.transpose(1, 2), n_rep), mask)
    batch, seq, _ = x.shape
    return F.linear(out.reshape(batch, seq, -1), weights["o_proj"])  # (batch, n_heads, seq, d) read as (batch, seq, ...)


@mistake("03.gqa_forward", "linear_layout")
def gqa_multiplies_by_untransposed_weights(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    batch, seq, _ = x.shape
    head_dim = weights["q_proj"].shape[0] // n_heads
    q = (x @ weights["q_proj"]).view(batch, seq, n_heads, head_dim)
    k = (x @ weights["k_proj"]).view(batch, seq, n_kv_heads, head_dim)
    v = (x @ weights["v_proj"]).view(batch, seq, n_kv_heads, head_dim)
    q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k, n_rep), repeat_kv(v.transpose(1, 2), n_rep), mask)
    return out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim) @ weights["o_proj"]


@mistake("03.gqa_forward", "mask")
def gqa_forgets_the_mask(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return _finish(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "own_mask")
def gqa_builds_its_own_causal_mask(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    causal = causal_mask(x.shape[1])  # "attention in a decoder is always causal"
    return _finish(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "grad_detached")
def gqa_projects_under_no_grad(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    with torch.no_grad():  # "the projections are fixed weights"
        q, k, v = _projections(x, weights, n_heads, n_kv_heads)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return _finish(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, weights, n_heads, n_kv_heads)


@mistake("03.gqa_forward", "mask_truthy")
def gqa_tests_the_mask_for_truth(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k, v = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
    n_rep = n_heads // n_kv_heads
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask:  # the learner thought `if mask:` asks "is there a mask?"
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    batch, _, seq, head_dim = out.shape
    return F.linear(out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim), weights["o_proj"])


@mistake("03.gqa_forward", "contiguous")
def gqa_views_the_transposed_output(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k, v = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
    batch, _, seq, head_dim = out.shape
    # the learner thought view and reshape are the same: view cannot merge the transposed heads
    return F.linear(out.transpose(1, 2).view(batch, seq, n_heads * head_dim), weights["o_proj"])


@mistake("03.gqa_forward", "rope_layout")
def gqa_rotates_after_moving_the_heads(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = _projections(x, weights, n_heads, n_kv_heads)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    # the learner thought RoPE can come after the transpose: apply_rope wants (batch, seq, heads, head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return _finish(q, k, v, mask, weights, n_heads, n_kv_heads)


# --------------------------------------------------------------------------- 03.kv_cache


@mistake("03.kv_cache", "positions")
def decode_positions_restart_at_zero(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    seq = x.shape[1]
    total = k_cache.shape[2] + seq
    q, k, v = project_qkv(x, weights, cos[:seq], sin[:seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    return attend(q, k_cache, v_cache, causal_mask(seq, total), weights["o_proj"]), k_cache, v_cache


@mistake("03.kv_cache", "mask_offset")
def decode_mask_not_offset(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    mask = torch.ones(seq, past + seq, dtype=torch.bool).tril()  # query 0 sees key 0 only
    return attend(q, k_cache, v_cache, mask, weights["o_proj"]), k_cache, v_cache


@mistake("03.kv_cache", "mask")
def decode_without_mask(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    return attend(q, k_cache, v_cache, None, weights["o_proj"]), k_cache, v_cache  # fine for one token only


@mistake("03.kv_cache", "cache_rotated")
def decode_caches_keys_before_rope(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    total = past + seq
    q, _, _ = project_qkv(x, weights, cos[past:total], sin[past:total], n_heads, n_kv_heads)
    no_rotation = torch.ones_like(cos[past:total]), torch.zeros_like(sin[past:total])
    _, k, v = project_qkv(x, weights, *no_rotation, n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    keys = apply_rope(k_cache.transpose(1, 2), cos[:total], sin[:total]).transpose(1, 2)  # every key, every step
    return attend(q, keys, v_cache, causal_mask(seq, total), weights["o_proj"]), k_cache, v_cache


@mistake("03.kv_cache", "positions_shift")
def decode_positions_one_too_far(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    start = past + 1  # "the next position after the cache"
    q, k, v = project_qkv(x, weights, cos[start : start + seq], sin[start : start + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    return attend(q, k_cache, v_cache, causal_mask(seq, past + seq), weights["o_proj"]), k_cache, v_cache


@mistake("03.kv_cache", "cache_return")
def decode_returns_only_the_new_keys(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    keys, values = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    return attend(q, keys, values, causal_mask(seq, past + seq), weights["o_proj"]), k, v


@mistake("03.kv_cache", "cache_axis")
def decode_appends_heads(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1)
    return attend(q, k_cache, v_cache, causal_mask(seq, past + seq), weights["o_proj"]), k_cache, v_cache


@mistake("03.kv_cache", "return_type")
def decode_returns_only_the_output(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    return attend(q, k_cache, v_cache, causal_mask(seq, past + seq), weights["o_proj"])


@mistake("03.kv_cache", "contiguous")
def decode_views_the_transposed_output(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k_cache, n_rep), repeat_kv(v_cache, n_rep), causal_mask(seq, past + seq))
    batch, _, _, head_dim = out.shape
    # the learner thought view and reshape are the same: fine for one new token, not for a prompt
    return F.linear(out.transpose(1, 2).view(batch, seq, n_heads * head_dim), weights["o_proj"]), k_cache, v_cache


# -------------------------------------------------------------------------------- 03.mla


def _mla(x, weights, cos_all, sin_all, latent_cache, n_heads, rope_dim, *, restart=False, rotate_key=True,
         rope_first=False, kv_halves=False, rotate_cache=False, scale_nope=False, tril=False, detach_cache=False,
         no_mask=False, only_new=False, view=False):
    """A learner's MLA with one switch flipped (each entry below flips exactly one)."""
    batch, seq, _ = x.shape
    past = latent_cache.shape[1]
    total = past + seq
    cos, sin = (cos_all[:seq], sin_all[:seq]) if restart else (cos_all[past:total], sin_all[past:total])
    head_dim = weights["q_proj"].shape[0] // n_heads - rope_dim
    q = F.linear(x, weights["q_proj"]).view(batch, seq, n_heads, head_dim + rope_dim)
    if rope_first:
        q_rope, q_nope = q.split([rope_dim, head_dim], dim=-1)
    else:
        q_nope, q_rope = q.split([head_dim, rope_dim], dim=-1)
    q = torch.cat([q_nope, apply_rope(q_rope, cos, sin)], dim=-1)
    latent = F.linear(x, weights["kv_a_proj_with_mqa"])
    rank = latent.shape[-1] - rope_dim
    c_kv, k_rope = latent.split([rank, rope_dim], dim=-1)
    if rotate_key and not rotate_cache:
        k_rope = apply_rope(k_rope[:, :, None, :], cos, sin)[:, :, 0]
    new = torch.cat([c_kv, k_rope], dim=-1)
    latent_cache = torch.cat([latent_cache, new.detach() if detach_cache else new], dim=1)
    c_kv, k_rope = latent_cache.split([rank, rope_dim], dim=-1)
    if rotate_cache:
        k_rope = apply_rope(k_rope[:, :, None, :], cos_all[:total], sin_all[:total])[:, :, 0]
    kv = F.linear(c_kv, weights["kv_b_proj"])
    if kv_halves:
        k_nope, v = (t.reshape(batch, total, n_heads, head_dim) for t in kv.chunk(2, dim=-1))
    else:
        k_nope, v = kv.view(batch, total, n_heads, 2 * head_dim).split([head_dim, head_dim], dim=-1)
    k = torch.cat([k_nope, k_rope[:, :, None, :].expand(batch, total, n_heads, rope_dim)], dim=-1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask = torch.ones(seq, total, dtype=torch.bool).tril() if tril else causal_mask(seq, total)
    mask = None if no_mask else mask
    if scale_nope:
        scores = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
    else:
        out = attention(q, k, v, mask)
    out = out.transpose(1, 2)
    out = out.view(batch, seq, n_heads * head_dim) if view else out.reshape(batch, seq, n_heads * head_dim)
    return F.linear(out, weights["o_proj"]), new if only_new else latent_cache


@mistake("03.mla", "rope_key")
def mla_forgets_to_rotate_the_shared_key(*args):
    return _mla(*args, rotate_key=False)


@mistake("03.mla", "positions")
def mla_positions_restart_at_zero(*args):
    return _mla(*args, restart=True)


@mistake("03.mla", "kv_split")
def mla_splits_keys_and_values_in_halves(*args):
    return _mla(*args, kv_halves=True)


@mistake("03.mla", "q_split")
def mla_takes_the_rope_part_first(*args):
    return _mla(*args, rope_first=True)


@mistake("03.mla", "cache_rotated")
def mla_caches_the_unrotated_key(*args):
    return _mla(*args, rotate_cache=True)


@mistake("03.mla", "scale")
def mla_scales_by_head_dim_only(*args):
    return _mla(*args, scale_nope=True)


@mistake("03.mla", "mask_offset")
def mla_mask_not_offset(*args):
    return _mla(*args, tril=True)


@mistake("03.mla", "grad_differs")
def mla_detaches_the_cache_entry(*args):
    return _mla(*args, detach_cache=True)  # "the cache is storage": keys and values lose their gradient


@mistake("03.mla", "mask")
def mla_without_a_mask(*args):
    return _mla(*args, no_mask=True)  # the learner thought decoding is one token at a time, so nothing to mask


@mistake("03.mla", "cache_return")
def mla_returns_only_the_new_latents(*args):
    return _mla(*args, only_new=True)  # the learner thought the caller appends them to its cache


@mistake("03.mla", "contiguous")
def mla_views_the_transposed_output(*args):
    return _mla(*args, view=True)  # the learner thought view and reshape are the same


@mistake("03.gqa_forward", "o_proj")
def gqa_without_the_output_projection(x, weights, cos, sin, mask, n_heads, n_kv_heads):
    q, k, v = project_qkv(x, weights, cos, sin, n_heads, n_kv_heads)
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
    batch, _, seq, head_dim = out.shape
    # the learner thought concatenating the heads is the end: (batch, seq, n_heads * head_dim) has dim's shape
    return out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim)


@mistake("03.kv_cache", "o_proj")
def decode_without_the_output_projection(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    n_rep = n_heads // n_kv_heads
    out = attention(q, repeat_kv(k_cache, n_rep), repeat_kv(v_cache, n_rep), causal_mask(seq, past + seq))
    batch, _, _, head_dim = out.shape
    # the learner thought the heads side by side are the output: o_proj is forgotten
    return out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim), k_cache, v_cache


@mistake("03.mla", "cache_axis")
def mla_appends_on_the_feature_axis(x, weights, cos_all, sin_all, latent_cache, n_heads, rope_dim):
    batch, seq, _ = x.shape
    past = latent_cache.shape[1]
    cos, sin = cos_all[past : past + seq], sin_all[past : past + seq]
    latent = F.linear(x, weights["kv_a_proj_with_mqa"])
    rank = latent.shape[-1] - rope_dim
    c_kv, k_rope = latent.split([rank, rope_dim], dim=-1)
    k_rope = apply_rope(k_rope[:, :, None, :], cos, sin)[:, :, 0]
    # the learner thought the cache grows on its last axis, as the per-head caches grow on dim=2
    latent_cache = torch.cat([latent_cache, torch.cat([c_kv, k_rope], dim=-1)], dim=2)
    return _mla(x, weights, cos_all, sin_all, latent_cache, n_heads, rope_dim)
