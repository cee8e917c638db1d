"""Wrong answers to chapter 07's checkpoints, as learners write them.

The sampling mistakes call the chapter's correct filters (as a learner's notebook would, once
those checkpoints pass), so one mistake is the only difference from the reference. The
decoding-loop mistakes are whole ``generate`` functions, each run through the same adapter as
the notebook's given ``generate_from_weights``.
"""

from __future__ import annotations

import torch

from solutions.generate import apply_temperature, check_sampling, top_k_filter, top_p_filter
from solutions.model import LlamaConfig, Transformer

from . import mistake

INF = float("-inf")


# ------------------------------------------------------------------------ 07.temperature


def _check(temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")


@mistake("07.temperature", "multiply")
def temperature_multiplies(logits, temperature):
    _check(temperature)
    return logits * temperature


@mistake("07.temperature", "probabilities")
def temperature_returns_probabilities(logits, temperature):
    _check(temperature)
    return torch.softmax(logits / temperature, dim=-1)


@mistake("07.temperature", "divide_probs")
def temperature_divides_probabilities(logits, temperature):
    _check(temperature)
    probs = torch.softmax(logits, dim=-1)
    return probs / temperature


@mistake("07.temperature", "log_probs")
def temperature_log_softmax(logits, temperature):
    _check(temperature)
    return torch.log_softmax(logits / temperature, dim=-1)


@mistake("07.temperature", "mutated_input")
def temperature_in_place(logits, temperature):
    _check(temperature)
    logits /= temperature
    return logits


@mistake("07.temperature", "negative")
def temperature_refuses_only_zero(logits, temperature):
    if temperature == 0:
        raise ValueError("temperature 0 is greedy")
    return logits / temperature


@mistake("07.temperature", "zero")
def temperature_unchecked(logits, temperature):
    return logits / temperature


@mistake("07.temperature", "shifted")
def temperature_subtracts_the_max_for_stability(logits, temperature):
    _check(temperature)
    return (logits - logits.max(dim=-1, keepdim=True).values) / temperature


# ------------------------------------------------------------------------------ 07.top_k


def _check_k(k):
    if k < 1:
        raise ValueError("k must be >= 1")


@mistake("07.top_k", "off_by_one")
def top_k_removes_the_kth(logits, k):
    _check_k(k)
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, INF)


@mistake("07.top_k", "ties")
def top_k_exactly_k_indices(logits, k):
    _check_k(k)
    indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, indices, True)
    return logits.masked_fill(~keep, INF)


@mistake("07.top_k", "zero_fill")
def top_k_fills_zeros(logits, k):
    _check_k(k)
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


@mistake("07.top_k", "smallest")
def top_k_keeps_the_smallest(logits, k):
    _check_k(k)
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, INF)


@mistake("07.top_k", "keepdim")
def top_k_threshold_without_keepdim(logits, k):
    _check_k(k)
    values = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values
    return logits.masked_fill(logits < values[:, -1], INF)  # (batch,) against (batch, vocab)


@mistake("07.top_k", "per_row")
def top_k_one_threshold_for_the_batch(logits, k):
    _check_k(k)
    kth = torch.topk(logits.flatten(), min(k, logits.numel())).values[-1]
    return logits.masked_fill(logits < kth, INF)


@mistake("07.top_k", "k_large")
def top_k_unclamped(logits, k):
    _check_k(k)
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, INF)


@mistake("07.top_k", "kth_index")
def top_k_sorted_index_k(logits, k):
    _check_k(k)
    kth = logits.sort(dim=-1, descending=True).values[..., k, None]  # the k-th largest... at index k
    return logits.masked_fill(logits < kth, INF)


@mistake("07.top_k", "validate")
def top_k_checks_the_value_not_the_type(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, INF)


@mistake("07.top_k", "mutated_input")
def top_k_in_place(logits, k):
    _check_k(k)
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    logits[logits < kth] = INF
    return logits


@mistake("07.top_k", "validate")
def top_k_unchecked(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, INF)


# ------------------------------------------------------------------------------ 07.top_p


def _check_p(p):
    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")


def _sorted(logits, descending=True, dim=-1):
    probs = torch.softmax(logits, dim=dim)
    return probs.sort(dim=-1, descending=descending)


@mistake("07.top_p", "crossing")
def top_p_drops_the_crossing_token(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) > p
    remove[..., 0] = False  # always keep the most likely token
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "p_one")
def top_p_without_the_p_one_shortcut(logits, p):
    _check_p(p)
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p  # at p = 1, float32 rounding removes a tiny tail
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "keep_top")
def top_p_inclusive_cumsum(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) > p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "sort_order")
def top_p_ascending(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits, descending=False)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "unsort")
def top_p_mask_left_sorted(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, _ = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove, INF)


@mistake("07.top_p", "logits_cumsum")
def top_p_accumulates_logits(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove = sorted_logits.cumsum(dim=-1) - sorted_logits >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "softmax_dim")
def top_p_softmax_over_the_batch(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits, dim=0)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "zero_fill")
def top_p_fills_zeros(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), 0.0)


@mistake("07.top_p", "probabilities")
def top_p_returns_probabilities(logits, p):
    _check_p(p)
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return torch.softmax(logits.masked_fill(remove.scatter(-1, order, remove), INF), dim=-1)


@mistake("07.top_p", "validate")
def top_p_accepts_zero(logits, p):
    if not 0 <= p <= 1:
        raise ValueError("p must be a probability")
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.top_p", "validate")
def top_p_unchecked(logits, p):
    if p == 1:
        return logits.clone()
    sorted_probs, order = _sorted(logits)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


# ----------------------------------------------------------------------------- 07.sample


def _filtered(logits, temperature, top_k, top_p):
    z = apply_temperature(logits, temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p < 1:
        z = top_p_filter(z, top_p)
    return z


def _draw(z, u):
    cdf = torch.softmax(z, dim=-1).cumsum(dim=-1)
    return (cdf <= u.unsqueeze(-1)).sum(dim=-1).clamp(max=z.shape[-1] - 1)


@mistake("07.sample", "greedy")
def sample_greedy_by_dividing_by_zero(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    return _draw(_filtered(logits, temperature, top_k, top_p), u)  # T = 0: apply_temperature raises


@mistake("07.sample", "u_zero")
def sample_with_searchsorted(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(_filtered(logits, temperature, top_k, top_p), dim=-1).cumsum(dim=-1)
    index = torch.searchsorted(cdf, u.unsqueeze(-1).contiguous()).squeeze(-1)  # first F_j >= u
    return index.clamp(max=logits.shape[-1] - 1)


@mistake("07.sample", "inverse_cdf")
def sample_with_multinomial(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(_filtered(logits, temperature, top_k, top_p), dim=-1)
    generator = torch.Generator().manual_seed(0)  # its own randomness, not u
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@mistake("07.sample", "inverse_cdf")
def sample_last_token_below_u(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(_filtered(logits, temperature, top_k, top_p), dim=-1).cumsum(dim=-1)
    return ((cdf <= u.unsqueeze(-1)).sum(dim=-1) - 1).clamp(0, logits.shape[-1] - 1)


@mistake("07.sample", "temperature")
def sample_temperature_on_probabilities(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    z = top_k_filter(logits, top_k) if top_k is not None else logits
    z = top_p_filter(z, top_p) if top_p < 1 else z
    probs = torch.softmax(z, dim=-1) / temperature
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return (probs.cumsum(dim=-1) <= u.unsqueeze(-1)).sum(dim=-1).clamp(max=logits.shape[-1] - 1)


@mistake("07.sample", "order_temperature")
def sample_filters_before_temperature(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    z = top_k_filter(logits, top_k) if top_k is not None else logits
    z = top_p_filter(z, top_p) if top_p < 1 else z
    return _draw(apply_temperature(z, temperature), u)


@mistake("07.sample", "order")
def sample_top_p_before_top_k(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    z = apply_temperature(logits, temperature)
    z = top_p_filter(z, top_p) if top_p < 1 else z
    z = top_k_filter(z, top_k) if top_k is not None else z
    return _draw(z, u)


@mistake("07.sample", "renormalise")
def sample_zeroes_probabilities_without_renormalising(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(apply_temperature(logits, temperature), dim=-1)
    keep = _filtered(logits, temperature, top_k, top_p) != INF
    cdf = (probs * keep).cumsum(dim=-1)
    return (cdf <= u.unsqueeze(-1)).sum(dim=-1).clamp(max=logits.shape[-1] - 1)


@mistake("07.sample", "logits")
def sample_cdf_of_logits(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = _filtered(logits, temperature, top_k, top_p).cumsum(dim=-1)
    return (cdf <= u.unsqueeze(-1)).sum(dim=-1).clamp(max=logits.shape[-1] - 1)


@mistake("07.sample", "shape")
def sample_keepdim(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return _draw(_filtered(logits, temperature, top_k, top_p), u).unsqueeze(-1)


@mistake("07.sample", "none_filters")
def sample_always_filters(logits, temperature, top_k, top_p, u):
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    z = top_k_filter(apply_temperature(logits, temperature), top_k)  # top_k=None means "no filter"
    return _draw(top_p_filter(z, top_p), u)


@mistake("07.sample", "validate")
def sample_without_checking(logits, temperature, top_k, top_p, u):
    if temperature == 0:
        return logits.argmax(dim=-1)
    return _draw(_filtered(logits, temperature, top_k, top_p), u)


@mistake("07.sample", "validate")
def sample_greedy_before_validation(logits, temperature, top_k, top_p, u):
    if temperature == 0:  # greedy needs no parameters... but they are still wrong
        return logits.argmax(dim=-1)
    check_sampling(temperature, top_k, top_p)
    return _draw(_filtered(logits, temperature, top_k, top_p), u)


# --------------------------------------------------------------------------- 07.generate


def _adapter(generate):
    """What the notebook's given generate_from_weights does, around a learner's generate."""

    def run(config, weights, prompt, options):
        model = Transformer(LlamaConfig(**config))
        model.load_state_dict(weights)
        runs = []
        model.register_forward_pre_hook(lambda m, args, kwargs: runs.append((args[0] if args else kwargs["tokens"]).shape[-1]),
                                        with_kwargs=True)
        options = dict(options)
        seed = options.pop("seed", None)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        n = options.get("max_new_tokens")
        limit = max(n, 0) + 1 if isinstance(n, int) and not isinstance(n, bool) else None
        tokens = []
        for token in generate(model, prompt, generator=generator, **options):
            tokens.append(token)
            if len(tokens) == limit:  # one more than asked for: enough to show a loop that never ends
                break
        return {"tokens": tokens, "each position run once": sum(runs) <= len(prompt) + len(tokens)}

    run.__name__ = generate.__name__
    return run


def _sample(logits, temperature, top_k, top_p, generator):
    from solutions.generate import sample_next

    u = torch.rand(1, generator=generator) if temperature > 0 else None
    return sample_next(logits[:, -1], temperature, top_k, top_p, u)


def _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, *, sign=True):
    check_sampling(temperature, top_k, top_p)
    if sign and max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long)
    if tokens.shape[1] == 0:
        raise ValueError("empty prompt")
    if tokens.shape[1] + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError("the prompt and the new tokens do not fit the context")
    return tokens


@mistake("07.generate", "no_cache")
@_adapter
def generate_never_caches(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0, stop_tokens=(),
                          use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(tokens)  # use_cache ignored: the whole sequence, every step
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)


@mistake("07.generate", "uncached")
@_adapter
def generate_always_caches(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                           stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches()  # use_cache=False ignored
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)


@mistake("07.generate", "whole_sequence")
@_adapter
def generate_feeds_everything_to_the_cache(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None,
                                           top_p=1.0, stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(tokens, caches)  # the whole sequence, every step, into the cache
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)


@mistake("07.generate", "prefill")
@_adapter
def generate_without_prefill(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                             stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    last = tokens[:, -1:]  # only the prompt's last token goes in
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(last, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        last = next_id.view(1, 1)
        tokens = torch.cat([tokens, last], dim=1)


@mistake("07.generate", "cache_reset")
@_adapter
def generate_new_caches_every_step(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                   stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    new = tokens
    for _ in range(max_new_tokens):
        caches = model.new_caches() if use_cache else None  # inside the loop
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "last_position")
@_adapter
def generate_from_the_first_position(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                     stop_tokens=(), use_cache=True, generator=None):
    from solutions.generate import sample_next

    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        u = torch.rand(1, generator=generator) if temperature > 0 else None
        next_id = sample_next(logits[:, 0], temperature, top_k, top_p, u)  # the first position
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "stop_included")
@_adapter
def generate_yields_the_stop_token(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                   stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        yield next_id.item()
        if next_id.item() in stop_tokens:  # checked after yielding
            return
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "stop_ignored")
@_adapter
def generate_ignores_stop_tokens(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                 stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "stop_in_prompt")
@_adapter
def generate_looks_for_stop_tokens_everywhere(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None,
                                              top_p=1.0, stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)
        if any(t in stop_tokens for t in tokens[0].tolist()):  # the prompt too
            return


@mistake("07.generate", "max_length")
@_adapter
def generate_counts_the_prompt(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                               stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    while tokens.shape[1] < max_new_tokens:  # as if max_new_tokens were a total length
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "count")
@_adapter
def generate_first_token_before_the_loop(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None,
                                         top_p=1.0, stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    with torch.no_grad():
        logits = model(tokens, caches) if use_cache else model(tokens)
    next_id = _sample(logits, temperature, top_k, top_p, generator)
    if next_id.item() in stop_tokens:
        return
    yield next_id.item()
    tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)
    for _ in range(max_new_tokens - 1):
        with torch.no_grad():
            logits = model(next_id.view(1, 1), caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)


@mistake("07.generate", "context_late")
@_adapter
def generate_checks_the_context_when_it_overflows(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None,
                                                   top_p=1.0, stop_tokens=(), use_cache=True, generator=None):
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long)
    if tokens.shape[1] == 0:
        raise ValueError("empty prompt")
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        if tokens.shape[1] >= model.cfg.max_seq_len:  # only once the sequence is full
            raise ValueError("the sequence does not fit the context")
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "crop")
@_adapter
def generate_crops_like_nanogpt(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                stop_tokens=(), use_cache=True, generator=None):
    check_sampling(temperature, top_k, top_p)
    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long)
    if tokens.shape[1] == 0:
        raise ValueError("empty prompt")
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens[:, -model.cfg.max_seq_len:])
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "context")
@_adapter
def generate_refuses_a_full_context(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                    stop_tokens=(), use_cache=True, generator=None):
    check_sampling(temperature, top_k, top_p)
    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long)
    if tokens.shape[1] == 0:
        raise ValueError("empty prompt")
    if tokens.shape[1] + max_new_tokens >= model.cfg.max_seq_len:  # off by one: exactly full is fine
        raise ValueError("too long")
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "empty_prompt")
@_adapter
def generate_without_an_empty_check(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                    stop_tokens=(), use_cache=True, generator=None):
    check_sampling(temperature, top_k, top_p)
    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long).reshape(1, -1)
    if tokens.shape[1] + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError("too long")
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "sampling")
@_adapter
def generate_with_the_global_rng(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                 stop_tokens=(), use_cache=True, generator=None):
    from solutions.generate import sample_next

    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = sample_next(logits[:, -1], temperature, top_k, top_p, None)  # u from the global generator
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "ints")
@_adapter
def generate_yields_tensors(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                            stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id  # a (1,) tensor
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "negative")
@_adapter
def generate_accepts_a_negative_count(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                      stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, sign=False)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "sampling")
@_adapter
def generate_with_torch_multinomial(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                    stop_tokens=(), use_cache=True, generator=None):
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        if temperature == 0:
            next_id = logits[:, -1].argmax(dim=-1)
        else:
            z = apply_temperature(logits[:, -1], temperature)
            z = top_k_filter(z, top_k) if top_k is not None else z
            z = top_p_filter(z, top_p) if top_p < 1 else z
            next_id = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).view(1)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "too_many")
@_adapter
def generate_until_a_stop_token(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                stop_tokens=(), use_cache=True, generator=None):
    # the learner thought a stop token always comes, and looped `while True` (max_new_tokens only validated)
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    while True:
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


# ----------------------------------------------- the last dimension (written for (batch, vocab) only)


@mistake("07.top_k", "last_dim")
def top_k_along_dim_1(logits, k):
    # the learner thought logits are always (batch, vocab), so the vocabulary is dim 1
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError("k must be an int >= 1")
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=1).values[..., -1:]
    return logits.masked_fill(logits < kth, INF)


@mistake("07.top_p", "last_dim")
def top_p_softmax_along_dim_1(logits, p):
    # the learner thought logits are always (batch, vocab): softmax(dim=1) is the vocabulary there
    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")
    if p == 1:
        return logits.clone()
    probs = torch.softmax(logits, dim=1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= p
    return logits.masked_fill(remove.scatter(-1, order, remove), INF)


@mistake("07.sample", "last_dim")
def sample_softmax_along_dim_1(logits, temperature, top_k, top_p, u):
    # the learner thought logits are always (batch, vocab): softmax and cumsum along dim 1
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(_filtered(logits, temperature, top_k, top_p), dim=1).cumsum(dim=1)
    return (cdf <= u[..., None]).sum(dim=-1)


@mistake("07.generate", "sampling")
@_adapter
def generate_forgets_top_p(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                           stop_tokens=(), use_cache=True, generator=None):
    # the learner validated top_p, then called sample_next without it (its default of "no nucleus" in mind)
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, 1.0, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.generate", "too_many")
@_adapter
def generate_cropped_until_a_stop_token(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                        stop_tokens=(), use_cache=True, generator=None):
    # the learner thought a stop token always comes: `while True`, the window cropped as in nanoGPT,
    # so the model never refuses and the loop never ends (the adapter reads max_new_tokens + 1)
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    while True:
        with torch.no_grad():
            logits = model(tokens[:, -model.cfg.max_seq_len:])
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)


@mistake("07.generate", "echo")
@_adapter
def generate_yields_the_prompt_too(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                   stop_tokens=(), use_cache=True, generator=None):
    # the learner thought generate returns the whole text, as Hugging Face's generate does
    tokens = _checked_prompt(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    yield from (int(t) for t in tokens[0])
    caches = model.new_caches() if use_cache else None
    new = tokens
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(new, caches) if use_cache else model(tokens)
        next_id = _sample(logits, temperature, top_k, top_p, generator)
        if next_id.item() in stop_tokens:
            return
        yield next_id.item()
        new = next_id.view(1, 1)
        tokens = torch.cat([tokens, new], dim=1)


@mistake("07.sample", "u_scale")
def sample_compares_with_u_unscaled(logits, temperature, top_k, top_p, u):
    # the learner thought the cumulative probabilities end at exactly 1, so some F_j always exceeds u < 1
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(_filtered(logits, temperature, top_k, top_p), dim=-1).cumsum(dim=-1)
    return (cdf <= u[..., None]).sum(dim=-1)
