r"""Speculative decoding: a small draft model guesses, the large target model checks, exactly.

Decoding one token at a time runs the whole target model for every token. **Speculative
decoding** (Leviathan et al., 2023; Chen et al., 2023) lets a cheap *draft* model propose
:math:`\gamma` tokens, one at a time with its own KV cache, then runs the *target* once on all
of them: one forward pass over :math:`\gamma + 1` positions gives the target's distribution
:math:`p` after each drafted prefix. Drafted token :math:`x_i`, drawn from the draft's
:math:`q_i`, is **accepted** with probability :math:`\min(1, p_i(x_i) / q_i(x_i))`; at the first
rejection the token is drawn instead from the **residual**

.. math:: p'(x) = \frac{\max(0,\ p(x) - q(x))}{\sum_y \max(0,\ p(y) - q(y))}

and the step ends; if all :math:`\gamma` are accepted, one **bonus** token is drawn from the
target's last distribution, for free. Every token so produced is distributed exactly as the
target's own sample would be: the output is the target's, only faster. Greedy decoding is the
temperature-0 limit: :math:`p` and :math:`q` are one-hot on their argmax, a draft token is
accepted when it *is* the target's argmax, and the residual is the target's argmax.

With an acceptance rate :math:`\alpha` (each drafted token accepted independently with
probability :math:`\alpha`), a step yields on average

.. math:: \mathbb{E}[\text{tokens per step}] = \frac{1 - \alpha^{\gamma + 1}}{1 - \alpha}

tokens, for the cost of :math:`\gamma` draft steps and one target pass. With :math:`c` the cost
of a draft step relative to a target step (and a target pass over :math:`\gamma + 1` positions
costing one step), the speed-up over plain decoding is at most

.. math:: S(\alpha, \gamma, c) = \frac{1 - \alpha^{\gamma + 1}}{(1 - \alpha)(\gamma c + 1)}.

This module has, in the order the chapter builds them:

* :func:`check_speculative`: the parameters, validated (a ``ValueError`` says what to change);
* :func:`to_probs`: logits to the distribution a token is drawn from (one-hot at temperature 0);
* :func:`accept_draft`: the acceptance step, with its uniform numbers given;
* :func:`expected_tokens` and :func:`speedup_bound`: the theory;
* :func:`rollback` and :func:`speculative_generate`: draft, verify, roll both caches back;
  :func:`speculative_from_weights` runs it on models given as plain data (the checkpoint);
* :class:`StaticKVCache` and :class:`LeanDecoder`: the lean decode loop (preallocated caches,
  fused projections) that both models use in the benchmark; :func:`greedy_decode`, the plain
  loop it is compared with;
* :func:`acceptance_rate`: :math:`\alpha` measured from a run's statistics;
* bonus, drafts without a draft model: :class:`MTPHeads` on the target's own hidden state,
  :func:`mtp_loss` (self-distillation), :func:`train_mtp_heads`, :func:`mtp_agreement` and
  :func:`mtp_generate` (greedy self-speculative decoding on :class:`LeanDecoder`);
* a draft without a model: :class:`NGramDraft`, a table of the target's greedy predictions after
  each n-gram of a text (distilled in one teacher-forced pass) plus the n-grams of the text being
  generated, kept in an :class:`NGramHistory` that rolls back like a cache.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from solutions.generate import _is_number, apply_temperature, check_sampling, top_k_filter, top_p_filter
from solutions.layers import causal_mask
from solutions.model import LlamaConfig, Transformer
from solutions.reward import hidden_states
from solutions.train import AdamW, decay_groups, lr_at

# ------------------------------------------------------------------- the parameters


def check_speculative(gamma: int, temperature: float, target_vocab: int, draft_vocab: int) -> None:
    """Raise ``ValueError`` naming the fix if speculative decoding cannot run with these settings.

    ``gamma`` (tokens drafted per step) an int >= 1; ``temperature`` finite and >= 0; the draft
    and the target must share one vocabulary (same size: the same tokenizer), since the target
    scores the draft's token ids.
    """
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise ValueError(f"gamma (tokens drafted per step) must be an int >= 1, got {gamma!r}: 4 is a good start; "
                         "for no speculation at all, decode with the target alone (chapter 07's generate)")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if draft_vocab != target_vocab:
        raise ValueError(f"the draft's vocabulary ({draft_vocab} ids) differs from the target's ({target_vocab}): "
                         "the target scores the draft's token ids, so both must use the same tokenizer; pick a "
                         "draft trained with the target's tokenizer")


def check_prompt(prompt_ids, max_new_tokens: int, context: int) -> list[int]:
    """The prompt as a list of ints, checked: ``ValueError`` naming the fix if ``max_new_tokens`` is
    not an int >= 0, the prompt is empty, or the prompt and the new tokens do not fit ``context``
    positions (the smaller of the two models' ``max_seq_len``)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    prompt = [int(t) for t in (prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)]
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (for example the <|endoftext|> id)")
    if len(prompt) + max_new_tokens > context:
        raise ValueError(f"a prompt of {len(prompt)} tokens plus max_new_tokens={max_new_tokens} does not fit the "
                         f"models' context of {context} positions: ask for at most {max(context - len(prompt), 0)} "
                         "new tokens or shorten the prompt")
    return prompt


# ------------------------------------------------------------ logits to distributions


def to_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    r"""The distribution the next token is drawn from, in float32: ``(..., vocab)``.

    Temperature 0: one-hot on :math:`\arg\max` (greedy as a distribution). Otherwise chapter
    07's pipeline: temperature, top-k, top-p, softmax. Draft and target must use the same one,
    so that :math:`p` and :math:`q` are the distributions each would really sample from.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()  # (..., vocab)
    z = apply_temperature(logits.float(), temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p < 1:
        z = top_p_filter(z, top_p)
    return torch.softmax(z, dim=-1)  # (..., vocab)


def _inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """The first token whose cumulative probability exceeds ``u`` times the total (chapter 07's draw)."""
    cdf = probs.cumsum(dim=-1)  # (vocab,)
    return int((cdf <= u * cdf[-1]).sum().clamp(max=probs.shape[-1] - 1))


# ------------------------------------------------------------------ the acceptance step


def accept_draft(p: torch.Tensor, q: torch.Tensor, drafted: list[int], u: torch.Tensor) -> list[int]:
    r"""The acceptance step of speculative sampling: the tokens a step produces.

    ``p``: ``(gamma + 1, vocab)``, the target's distribution after each drafted prefix (row
    :math:`i` is what the target would draw in place of drafted token :math:`i`; the last row,
    after all of them, is for the bonus token); ``q``: ``(gamma, vocab)``, the draft's
    distributions that ``drafted`` (``gamma`` ints) were drawn from; ``u``: ``(gamma + 1,)``
    uniform numbers in [0, 1).

    For :math:`i = 0, 1, \dots`: accept :math:`x_i` if :math:`u_i < p_i(x_i) / q_i(x_i)` (tested
    as :math:`u_i\, q_i(x_i) < p_i(x_i)`, which needs no division). At the first rejection,
    draw the last token from the residual :math:`\mathrm{norm}(\max(0, p_i - q_i))` by the inverse
    CDF with :math:`u_\gamma`, and stop. If all are accepted, draw the bonus token from
    :math:`p_\gamma` with :math:`u_\gamma`. Returns the accepted tokens and then the drawn one:
    between 1 and ``gamma + 1`` ints. (A residual that rounds to all zeros, possible only where
    :math:`p_i = q_i` up to rounding, falls back to :math:`p_i`.)
    """
    gamma = len(drafted)
    if q.shape[0] != gamma or p.shape[0] != gamma + 1 or u.shape[0] != gamma + 1:
        raise ValueError(f"for gamma = {gamma} drafted tokens, p needs gamma + 1 rows, q and u gamma and gamma + 1: "
                         f"got p {tuple(p.shape)}, q {tuple(q.shape)}, u {tuple(u.shape)}")
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i, x]:  # accepted with probability min(1, p(x) / q(x))
            out.append(int(x))
            continue
        residual = (p[i] - q[i]).clamp(min=0)  # (vocab,): where the target wants more than the draft gave
        if not residual.sum() > 0:
            residual = p[i]
        out.append(_inverse_cdf(residual, float(u[gamma])))
        return out
    out.append(_inverse_cdf(p[gamma], float(u[gamma])))  # the bonus token
    return out


# --------------------------------------------------------------------------- the theory


def expected_tokens(alpha: float, gamma: int) -> float:
    r"""Expected tokens per step, :math:`(1 - \alpha^{\gamma + 1}) / (1 - \alpha)`: the accepted
    prefix (a truncated geometric number, capped at :math:`\gamma`) plus the one token drawn at
    the end; :math:`\gamma + 1` when :math:`\alpha = 1`. ``alpha`` in [0, 1], ``gamma`` >= 0."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is an acceptance probability, in [0, 1]; got {alpha!r}")
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 0:
        raise ValueError(f"gamma must be an int >= 0, got {gamma!r}")
    if alpha == 1:
        return float(gamma + 1)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def speedup_bound(alpha: float, gamma: int, c: float) -> float:
    r"""The expected wall-clock speed-up of speculative over plain decoding (Leviathan et al., Theorem 3.8):

    .. math:: S = \frac{1 - \alpha^{\gamma + 1}}{(1 - \alpha)(\gamma c + 1)}

    one step costs :math:`\gamma` draft steps (each :math:`c` target steps) plus one target pass,
    counted as one step (true while a pass over :math:`\gamma + 1` positions costs what one costs).
    ``c`` >= 0."""
    if not _is_number(c) or not c >= 0 or not math.isfinite(c):
        raise ValueError(f"c (the draft's cost per token relative to the target's) must be a number >= 0, got {c!r}")
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


def alpha_needed(goal: float, gamma: int, c: float, v: float = 1.0) -> float | None:
    r"""The smallest acceptance rate whose expected speed-up reaches ``goal``, or ``None`` if none does.

    The speed-up of a step is :math:`\mathbb{E}[\text{tokens}] / (\gamma c + v)` (``v``: a target pass
    on :math:`\gamma + 1` positions over a pass on one; 1 in :func:`speedup_bound`). It grows with
    :math:`\alpha`, to :math:`(\gamma + 1) / (\gamma c + v)` for a draft that is always right: below
    ``goal`` there, no draft of cost ``c`` reaches it at this ``gamma``, however well trained.
    Found by bisection to about 1e-12."""
    if (gamma + 1) / (gamma * c + v) < goal:
        return None
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_tokens(mid, gamma) / (gamma * c + v) < goal else (low, mid)
    return high


# --------------------------------------------------------------------------- the loop


def rollback(caches, length: int) -> None:
    """Forget every cached position from ``length`` on, in every layer's cache.

    Works on chapter 03's ``KVCache`` (keys and values sliced) and on :class:`StaticKVCache`
    (its length set back; the stale entries are overwritten later)."""
    for cache in caches:
        if hasattr(cache, "crop"):
            cache.crop(length)
        elif cache.k is not None:
            cache.k, cache.v = cache.k[:, :, :length], cache.v[:, :, :length]


def speculative_generate(target, draft, prompt_ids, max_new_tokens: int, gamma: int = 4,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float = 1.0,
                         stop_tokens: Iterable[int] = (), generator: torch.Generator | None = None,
                         stats: list | None = None) -> Iterator[int]:
    r"""Continue ``prompt_ids`` with the target's own distribution, drafting ``gamma`` tokens per step.

    Both models keep a KV cache. Invariant between steps: both caches hold every committed token
    but the last, ``last``, which neither has seen. One step:

    1. **draft**: feed ``last`` (and a token the draft missed, see 4) to the draft, draw
       :math:`x_1` from its last position's :math:`q_1` (``torch.rand(1, generator=generator)``,
       chapter 07's inverse CDF; the argmax at temperature 0), feed :math:`x_1`, draw :math:`x_2`,
       ... until ``gamma`` tokens: ``gamma`` draft forwards of one token;
    2. **verify**: one target forward on ``[last, x_1, ..., x_gamma]`` ``(1, gamma + 1)`` gives
       :math:`p_1 .. p_{\gamma + 1}`;
    3. **accept**: :func:`accept_draft` with ``u = torch.rand(gamma + 1, generator=generator)``
       returns :math:`n` accepted tokens and one more;
    4. **roll back**: both caches to ``len(committed) - 1`` positions (the target holds drafted
       tokens past the first rejection, the draft too); if all ``gamma`` were accepted, the draft
       never saw :math:`x_\gamma`: it is fed first in the next step.

    Yields each new token; stops after ``max_new_tokens`` or at a token of ``stop_tokens`` (not
    yielded). Near the end, fewer tokens are drafted so that nothing runs past
    ``max_new_tokens``. ``stats``, if a list, receives ``(drafted, accepted)`` per step.
    ``target``, ``draft``: models called as ``model(tokens, caches)`` with ``model.new_caches()``
    and ``model.cfg`` (a :class:`~solutions.model.Transformer` or :class:`LeanDecoder`).
    ``ValueError`` if ``gamma`` < 1, the temperature or a sampling parameter is out of range, the
    vocabularies differ, the prompt is empty, or the prompt and the new tokens exceed either
    model's context (raised when iteration starts, as chapter 07's ``generate``).
    """
    check_speculative(gamma, temperature, target.cfg.vocab_size, draft.cfg.vocab_size)
    check_sampling(temperature, top_k, top_p)
    prompt = check_prompt(prompt_ids, max_new_tokens, min(target.cfg.max_seq_len, draft.cfg.max_seq_len))
    stop = set(stop_tokens)
    t_caches, d_caches = target.new_caches(), draft.new_caches()
    with torch.no_grad():
        if len(prompt) > 1:  # prefill: everything but the last token, whose logits nobody reads
            head = torch.tensor([prompt[:-1]])
            for model, caches in ((target, t_caches), (draft, d_caches)):
                getattr(model, "prefill", model)(head, caches)  # a model's own prefill if it has one
    committed = len(prompt)  # tokens so far
    last = prompt[-1]
    draft_todo = [last]  # tokens the draft has not seen yet
    produced = 0
    while produced < max_new_tokens:
        g = min(gamma, max_new_tokens - produced - 1)  # never draft past the end
        drafted, q_rows = [], []
        with torch.no_grad():
            for _ in range(g):
                logits = draft(torch.tensor([draft_todo]), d_caches)[0, -1]  # (vocab,)
                if temperature == 0:  # greedy: q is one-hot on the argmax, nothing to draw
                    x = int(logits.max(dim=-1).indices)  # the argmax (the first maximum), faster on a CPU
                else:
                    q = to_probs(logits, temperature, top_k, top_p)
                    x = _inverse_cdf(q, float(torch.rand(1, generator=generator)))
                    q_rows.append(q)
                drafted.append(x)
                draft_todo = [x]
            logits = target(torch.tensor([[last] + drafted]), t_caches)[0]  # (g + 1, vocab)
        if temperature == 0:  # accept_draft on one-hot p and q, without building them
            best = logits.max(dim=-1).indices.tolist()  # the target's argmax at each position
            n = next((i for i, x in enumerate(drafted) if x != best[i]), g)
            new = drafted[:n] + [best[n]]
        else:
            p = to_probs(logits, temperature, top_k, top_p)
            new = accept_draft(p, torch.stack(q_rows) if q_rows else p[:0], drafted,
                               torch.rand(g + 1, generator=generator))
        n = len(new) - 1
        if stats is not None:
            stats.append((g, n))
        committed += len(new)
        rollback(t_caches, committed - 1)
        if g == 0:  # nothing drafted (the last token): the draft saw nothing this step
            draft_todo = draft_todo + new
        elif n == g:  # all accepted: the draft never saw its own last token
            draft_todo = [drafted[-1], new[-1]]
        else:
            rollback(d_caches, committed - 1)
            draft_todo = [new[-1]]
        last = new[-1]
        for token in new:
            if token in stop:
                return
            yield token
            produced += 1


def speculative_from_weights(target_config: dict, target_weights: dict, draft_config: dict, draft_weights: dict,
                             prompt: list[int], options: dict) -> dict:
    """:func:`speculative_generate` on models given as plain data: the chapter's checkpoint calls this.

    Builds both ``Transformer`` s, records every position count each model's caches hold after
    each call, runs ``speculative_generate(target, draft, prompt, **options)`` (``options["seed"]``
    seeds a ``torch.Generator``) and returns ``{"tokens": [...], "steps": [(drafted, accepted),
    ...], "target cache": [...], "draft cache": [...]}``: the tokens, the statistics, and the
    length of the caches at the start of each model call (what a missing rollback changes).
    """
    models = {}
    for name, config, weights in (("target", target_config, target_weights), ("draft", draft_config, draft_weights)):
        model = Transformer(LlamaConfig(**config))
        model.load_state_dict(weights)
        models[name] = model.eval()
    lengths = {"target": [], "draft": []}

    def recorder(name):
        def hook(module, args, kwargs):
            caches = args[1] if len(args) > 1 else kwargs.get("caches")
            lengths[name].append(len(caches[0]) if caches else 0)
        return hook

    for name, model in models.items():
        model.register_forward_pre_hook(recorder(name), with_kwargs=True)
    options = dict(options)
    seed = options.pop("seed", None)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    steps = []
    tokens = list(speculative_generate(models["target"], models["draft"], prompt, generator=generator, stats=steps,
                                       **options))
    return {"tokens": tokens, "steps": steps, "target cache": lengths["target"], "draft cache": lengths["draft"]}


def acceptance_rate(steps: list[tuple[int, int]]) -> float:
    r""":math:`\hat\alpha`: accepted drafted tokens over drafted tokens *tested*.

    A step that accepts :math:`n` of :math:`g` tests :math:`n + 1` tokens when it rejects one
    (:math:`n < g`) and :math:`g` when it accepts all; later drafts are never tested. Under the
    model of independent acceptances with probability :math:`\alpha`, this ratio is its maximum
    likelihood estimate."""
    accepted = sum(n for _, n in steps)
    tested = sum(min(n + 1, g) for g, n in steps)
    return accepted / tested if tested else float("nan")


# --------------------------------------------------------------------- the lean loop


class StaticKVCache:
    """A preallocated KV cache: ``(batch, n_kv_heads, max_len, head_dim)`` keys and values, filled
    from the front. ``update`` writes in place and returns views of the filled part; ``crop(n)``
    rolls back in O(1). No ``torch.cat`` per token: the cache never reallocates."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype=torch.float32, device=None):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"{end} positions do not fit this cache of {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)


def _transposed(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's ``(out, in)`` weight as a contiguous ``(in, out)`` tensor, detached."""
    return weight.detach().t().contiguous()


class LeanDecoder:
    """A :class:`~solutions.model.Transformer` (dense) for decoding at batch 1, with less work per call.

    The same arithmetic in fewer operations, since at this size each operation's fixed cost
    (dispatch through PyTorch and Python, about 10 microseconds) outweighs its arithmetic: q, k
    and v projected by one fused matrix and rotated together (one RoPE for q and k), SwiGLU's gate
    and up by another fused matrix, ``F.rms_norm`` as one operation, keys and values written in
    place into preallocated :class:`StaticKVCache` s, no mask for a single token (it may see every
    cached key), plain functions instead of module calls, and ``torch.inference_mode``; weights
    stored transposed for ``x @ w``, whose cost grows less with the rows than ``F.linear``'s (a
    verifying pass has gamma + 1 of them).
    ``decoder(tokens, caches)`` and ``decoder.new_caches()`` as the model's; ``decoder.cfg`` its
    config. Logits agree with the model's within float32 rounding (tests: 1e-4).
    """

    def __init__(self, model: Transformer):
        cfg = model.cfg
        if cfg.n_experts:
            raise ValueError("LeanDecoder takes a dense model (n_experts = 0); decode a MoE model with the Transformer")
        self.cfg, self.eps = cfg, cfg.norm_eps
        self.nh, self.nkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.embed = model.embed_tokens.weight.detach()
        # Every weight stored transposed, (in, out), and applied as ``x @ w``: the same products as
        # ``F.linear(x, weight)``, but on the CPUs measured the kernel behind ``F.linear`` slows down from
        # 4 rows on while ``x @ w`` stays nearly flat (chapter 13, section 1 times both on the output
        # layer). A verifying pass of gamma + 1 rows pays that difference.
        self.head = _transposed(model.lm_head.weight)  # (dim, vocab)
        self.lm_head = model.lm_head.weight.detach()  # (vocab, dim), as the model's, for multi-token heads
        self.norm = model.norm.weight.detach()
        self.cos = model.rope_cos[:, None, :]  # (max_seq_len, 1, head_dim): broadcasts over heads
        self.sin = model.rope_sin[:, None, :]
        allowed = causal_mask(cfg.max_seq_len, device=self.embed.device)
        # additive (0 or -inf), sliced, never rebuilt: SDPA adds it as it stands (a boolean one is converted)
        self.mask = torch.zeros(allowed.shape, dtype=self.embed.dtype, device=self.embed.device)
        self.mask.masked_fill_(~allowed, -math.inf)  # (max_seq_len, max_seq_len)
        self.layers = []
        for layer in model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight.detach(),
                _transposed(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),  # (dim, (nh + 2 nkv) hd)
                _transposed(a.o_proj.weight),
                layer.post_attention_layernorm.weight.detach(),
                _transposed(torch.cat([m.gate_proj.weight, m.up_proj.weight])),  # (dim, 2 hidden)
                _transposed(m.down_proj.weight),
            ))

    def prefill(self, tokens: torch.Tensor, caches: list[StaticKVCache]) -> torch.Tensor:
        """Fill ``caches`` with ``tokens``; logits of the last position only (the output layer on one row)."""
        return self(tokens, caches, last_only=True)

    def new_caches(self) -> list[StaticKVCache]:
        return [StaticKVCache(1, self.nkv, self.cfg.max_seq_len, self.hd, self.embed.dtype, self.embed.device)
                for _ in self.layers]

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, caches: list[StaticKVCache], last_only: bool = False,
                 return_hidden: bool = False):
        """Logits ``(batch, seq, vocab)``; with ``last_only``, of the last position only, ``(batch, 1, vocab)``
        (a prefill whose other logits nobody reads skips most of the output layer's work). With
        ``return_hidden``, ``(logits, hidden)``: ``hidden`` the final hidden states (after the final
        RMSNorm, what the output layer reads), ``(batch, seq or 1, dim)``."""
        batch, seq = tokens.shape
        past = len(caches[0])
        end = past + seq
        if end > self.cfg.max_seq_len:
            raise ValueError(f"{end} positions do not fit max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.cos[past:end], self.sin[past:end]  # (seq, 1, head_dim)
        mask = None if seq == 1 else self.mask[past:end, :end]  # (seq, past + seq)
        nh, nkv, hd = self.nh, self.nkv, self.hd
        half, dim = hd // 2, self.embed.shape[1]
        x = F.embedding(tokens, self.embed)  # (batch, seq, dim)
        for (g1, w_qkv, w_o, g2, w_gu, w_down), cache in zip(self.layers, caches):
            qkv = (F.rms_norm(x, (dim,), g1, self.eps) @ w_qkv).view(batch, seq, nh + 2 * nkv, hd)
            qk, v = qkv[:, :, :nh + nkv], qkv[:, :, nh + nkv:]  # queries and keys rotated together
            qk = (qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin).transpose(1, 2)
            cache.k[:, :, past:end] = qk[:, nh:]  # (batch, nkv, seq, hd), written in place
            cache.v[:, :, past:end] = v.transpose(1, 2)
            att = F.scaled_dot_product_attention(qk[:, :nh], cache.k[:, :, :end], cache.v[:, :, :end],
                                                 attn_mask=mask, enable_gqa=True)  # (batch, nh, seq, hd)
            x = x + att.transpose(1, 2).reshape(batch, seq, nh * hd) @ w_o
            gate, up = (F.rms_norm(x, (dim,), g2, self.eps) @ w_gu).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ w_down
        for cache in caches:
            cache.length = end
        if last_only:
            x = x[:, -1:]
        x = F.rms_norm(x, (dim,), self.norm, self.eps)
        logits = x @ self.head  # (batch, seq, vocab)
        return (logits, x) if return_hidden else logits


def greedy_decode(model, prompt_ids, max_new_tokens: int) -> list[int]:
    """Plain cached greedy decoding, the baseline: the prompt once, then one token per call, argmax.
    ``model``: a :class:`LeanDecoder` (its ``prefill`` computes the last position's logits only, as
    ``transformers``' ``generate`` does) or a :class:`~solutions.model.Transformer`."""
    caches = model.new_caches()
    out = []
    with torch.no_grad():
        prompt = torch.tensor([list(prompt_ids)])
        logits = getattr(model, "prefill", model)(prompt, caches)  # as speculative_generate fills its caches
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].max(dim=-1).indices)  # argmax, the same kernel as speculative_generate's
            out.append(token)
            if len(out) < max_new_tokens:
                logits = model(torch.tensor([[token]]), caches)
    return out


# ------------------------------------------------------- multi-token heads (bonus)


class MTPHeads(nn.Module):
    r"""``K`` multi-token prediction heads on the target's final hidden state (Medusa, Cai et al., 2024).

    Head :math:`k` (:math:`k = 1 \dots K`) turns the hidden state :math:`h_t` (after the final
    RMSNorm) into a guess of token :math:`t + 1 + k` (the target itself predicts :math:`t + 1`):

    .. math:: \mathrm{logits}_k(h_t) = \mathrm{lm\_head}\big(h_t + \mathrm{SiLU}(W_k h_t)\big)

    a residual block (:math:`W_k`: ``dim x dim``, **zero** at the start, so that every head
    starts as the target's own next-token prediction) followed by the target's own output layer,
    shared and frozen: passed to :meth:`forward` as ``out_weight`` ``(vocab, dim)``, never a
    parameter here. Only the :math:`W_k` train.
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        self.blocks = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_heads))
        for block in self.blocks:
            nn.init.zeros_(block.weight)

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """``(K, ..., dim)``: each head's residual block applied to ``h`` ``(..., dim)``."""
        return torch.stack([h + F.silu(block(h)) for block in self.blocks])

    def forward(self, h: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, ..., vocab)`` from hidden states ``(..., dim)`` through the target's output layer."""
        return F.linear(self.hidden(h), out_weight)


def mtp_loss(head_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    r"""Self-distillation of ``K`` multi-token heads from the frozen target: ``(loss, per_head)``.

    ``head_logits``: ``(K, B, T, V)``, head :math:`k` at position :math:`t` guessing token
    :math:`t + 1 + k`; ``teacher_logits``: ``(B, T, V)``, the target's logits (position
    :math:`t` predicts token :math:`t + 1`). The target's distribution for token :math:`t + 1 + k`
    sits at position :math:`t + k`, so head :math:`k` is pulled towards it:

    .. math::
        \mathcal{L}_k = \frac{1}{B\,(T - k)} \sum_{b} \sum_{t=0}^{T-1-k}
            \mathrm{KL}\big(p_{b,\,t+k} \,\big\|\, q^{(k)}_{b,\,t}\big), \qquad
        \mathrm{KL}(p \,\|\, q) = \sum_v p_v (\log p_v - \log q_v)

    with :math:`p = \mathrm{softmax}(\text{teacher})` (detached: no gradient reaches the target)
    and :math:`q^{(k)} = \mathrm{softmax}(\text{head}_k)`. The last :math:`k` positions have no
    teacher and are left out. ``loss`` :math:`= \frac1K \sum_k \mathcal{L}_k`; ``per_head``: the
    :math:`\mathcal{L}_k` as ``K`` Python floats. ``ValueError`` if the shapes do not match,
    :math:`K < 1`, or :math:`T \le K` (no position left for the last head).
    """
    if head_logits.dim() != 4 or teacher_logits.dim() != 3 or head_logits.shape[1:] != teacher_logits.shape:
        raise ValueError(f"head_logits must be (K, B, T, V) and teacher_logits (B, T, V) with the same B, T, V: got "
                         f"{tuple(head_logits.shape)} and {tuple(teacher_logits.shape)}")
    K, B, T, V = head_logits.shape
    if K < 1:
        raise ValueError("no heads: head_logits needs K >= 1 rows")
    if T <= K:
        raise ValueError(f"T = {T} positions leave none for head {K} (it needs a teacher {K} positions later): "
                         "give sequences longer than the number of heads")
    log_p = teacher_logits.detach().float().log_softmax(dim=-1)  # (B, T, V)
    losses = []
    for k in range(1, K + 1):
        log_q = head_logits[k - 1, :, :T - k].float().log_softmax(dim=-1)  # (B, T - k, V): positions 0 .. T-1-k
        target = log_p[:, k:]  # (B, T - k, V): the teacher k positions later
        kl = (target.exp() * (target - log_q)).sum(dim=-1)  # (B, T - k)
        losses.append(kl.mean())
    per_head = torch.stack(losses)  # (K,)
    return per_head.mean(), [float(x) for x in per_head.detach()]


def train_mtp_heads(model: Transformer, heads: MTPHeads, steps: int, ids=None, batch_size: int = 8,
                    seq_len: int = 128, max_lr: float = 3e-2, warmup_steps: int = 10, seed: int = 0,
                    max_chars: int = 2_000_000, progress: bool = True) -> dict[str, list]:
    """Train ``heads`` on the frozen ``model`` by self-distillation (:func:`mtp_loss`); returns the history.

    Each step: ``batch_size`` windows of ``seq_len`` tokens at random places of ``ids`` (a seeded
    ``torch.Generator``; ``ids`` ``None``: the training stories, ``max_chars`` of them, tokenised
    with the course tokenizer), the target's final hidden states and logits under
    ``torch.no_grad()`` (the target is frozen: nothing of it trains), the heads' logits through
    the target's own output layer, the loss, chapter 06's AdamW on the heads alone (betas
    0.9, 0.95, no weight decay) with warm-up and cosine decay to a tenth of ``max_lr``.
    Returns ``{"loss": [...], "per_head": [[...], ...]}`` per step.
    """
    if ids is None:
        from data import course_tokenizer, load_corpus
        ids = course_tokenizer().encode(load_corpus("train", max_chars=max_chars), allowed_special="all")
    ids = torch.as_tensor(ids, dtype=torch.long)
    seq_len = min(seq_len, model.cfg.max_seq_len)
    if len(ids) <= seq_len:
        raise ValueError(f"{len(ids)} tokens do not fill one window of {seq_len}: give more text")
    g = torch.Generator().manual_seed(seed)
    optimizer = AdamW(decay_groups(heads, 0.0), lr=max_lr, betas=(0.9, 0.95))
    out_weight = model.lm_head.weight.detach()
    history: dict[str, list] = {"loss": [], "per_head": []}
    model.eval()
    heads.train()
    from tqdm.auto import tqdm
    bar = tqdm(range(steps), desc="MTP heads", unit="step", disable=not progress)
    for step in bar:
        starts = torch.randint(0, len(ids) - seq_len + 1, (batch_size,), generator=g)
        x = torch.stack([ids[s:s + seq_len] for s in starts.tolist()])  # (B, T)
        with torch.no_grad():  # the frozen target: its hidden states and its own next-token logits
            h = hidden_states(model, x)  # (B, T, dim)
            teacher = F.linear(h, out_weight)  # (B, T, V)
        loss, per_head = mtp_loss(heads(h, out_weight), teacher)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, steps, max_lr / 10)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history["loss"].append(loss.item())
        history["per_head"].append(per_head)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    heads.eval()
    return history


def mtp_agreement(model: Transformer, heads: MTPHeads, ids, windows: int = 8, seq_len: int = 256) -> list[float]:
    """Per head, how often its guess is the target's greedy choice: head ``k``'s argmax at position ``t``
    against the target's argmax at ``t + k`` (both for token ``t + 1 + k``), over ``windows``
    consecutive windows of ``seq_len`` tokens of ``ids``. ``K`` fractions in [0, 1]."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    seq_len = min(seq_len, model.cfg.max_seq_len)
    rows = [ids[i * seq_len:(i + 1) * seq_len] for i in range(min(windows, len(ids) // seq_len))]
    if not rows:
        raise ValueError(f"{len(ids)} tokens do not fill one window of {seq_len}")
    with torch.no_grad():
        h = hidden_states(model, torch.stack(rows))  # (W, T, dim)
        best = F.linear(h, model.lm_head.weight).argmax(dim=-1)  # (W, T): the target's choice for t + 1
        guesses = heads(h, model.lm_head.weight).argmax(dim=-1)  # (K, W, T): head k's for t + 1 + k
    T = best.shape[1]
    return [float((guesses[k - 1, :, :T - k] == best[:, k:]).float().mean()) for k in range(1, len(heads.blocks) + 1)]


def mtp_generate(decoder: LeanDecoder, heads: MTPHeads, prompt_ids, max_new_tokens: int,
                 stats: list | None = None) -> Iterator[int]:
    r"""Greedy self-speculative decoding: the target drafts with its own multi-token heads.

    The prompt's pass gives the first token (the target's argmax) and, from the last position's
    hidden state, the heads' guesses of the ``K`` tokens after it. Each step then runs the target
    once on ``[last, d_1, ..., d_g]``; the drafts equal to the target's argmax at the position
    before are accepted, up to the first that is not; the target's argmax after the last accepted
    one comes free (the bonus, or the correction); the cache rolls back to the committed tokens
    but the last (:func:`rollback`), and the heads draft the next ``K`` tokens from the hidden
    state at the last accepted position, the one that predicted the new last token. Yields
    exactly :func:`greedy_decode`'s tokens. At most ``min(K, tokens left - 1)`` drafted per step;
    ``stats``, if a list, receives ``(drafted, accepted)`` per step (the prompt's pass not
    counted: it drafts nothing). ``decoder``: a :class:`LeanDecoder` (``return_hidden``).
    ``ValueError`` for an empty prompt, a negative ``max_new_tokens`` or more tokens than the context.
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    prompt = [int(t) for t in (prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)]
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (for example the <|endoftext|> id)")
    if len(prompt) + max_new_tokens > decoder.cfg.max_seq_len:
        raise ValueError(f"a prompt of {len(prompt)} tokens plus max_new_tokens={max_new_tokens} does not fit the "
                         f"context of {decoder.cfg.max_seq_len} positions")
    if max_new_tokens == 0:
        return
    caches = decoder.new_caches()
    with torch.inference_mode():
        logits, h = decoder(torch.tensor([prompt]), caches, last_only=True, return_hidden=True)
        last = int(logits[0, -1].argmax())
        guesses = heads(h[0, -1], decoder.lm_head).argmax(dim=-1).tolist()  # (K,): tokens after `last`
    yield last  # the cache holds every token yielded so far but `last`
    produced = 1
    while produced < max_new_tokens:
        g = min(len(guesses), max_new_tokens - produced - 1)  # never draft past the end
        drafted = guesses[:g]
        with torch.inference_mode():
            logits, h = decoder(torch.tensor([[last] + drafted]), caches, return_hidden=True)  # (1, g + 1, ...)
            best = logits[0].argmax(dim=-1).tolist()
            n = next((i for i, x in enumerate(drafted) if x != best[i]), g)
            guesses = heads(h[0, n], decoder.lm_head).argmax(dim=-1).tolist()
        new = drafted[:n] + [best[n]]
        if stats is not None:
            stats.append((g, n))
        rollback(caches, len(prompt) + produced + len(new) - 1)  # every token but the new `last`
        last = new[-1]
        for token in new:
            yield token
            produced += 1


# ------------------------------------------------- a draft without a model: n-grams


class NGramHistory:
    """What an :class:`NGramDraft` keeps instead of a KV cache: the tokens it was fed, and an
    index of the text known to be committed (every n-gram of it, up to ``order``, mapped to the
    token that last followed it). ``crop(length)`` rolls back as a cache does and marks the
    tokens before ``length`` as committed; drafted tokens are never indexed before that, so a
    rejected guess is not proposed again from the context."""

    def __init__(self, order: int):
        self.order, self.tokens, self.indexed = order, [], 0
        self.seen: list[dict] = [{} for _ in range(order + 1)]  # seen[n][n-gram] = the next token

    def __len__(self) -> int:
        return len(self.tokens)

    def crop(self, length: int) -> None:
        del self.tokens[length:]
        self.commit(length)

    def commit(self, length: int) -> None:
        for end in range(max(self.indexed, 1), length):  # tokens[end] followed the n-grams ending before it
            for n in range(1, min(self.order, end) + 1):
                self.seen[n][tuple(self.tokens[end - n:end])] = self.tokens[end]
        self.indexed = max(self.indexed, length)


class NGramDraft:
    r"""A draft that costs almost nothing: a table of what the target says after each n-gram.

    :meth:`distil` runs the target over a text once (teacher forcing, a few windows at a time) and
    records, for every n-gram of the text (:math:`1 \le n \le` ``order``), the token the target
    most often predicts after it: a lookup table distilled from the target, as REST (He et al.,
    2023) drafts from a datastore and prompt lookup decoding from the prompt. To draft, the
    longest n-gram ending the current text that the table knows gives the guess; the text being
    generated is searched too (names of this story are in no table), and its continuation wins
    when its match is at least as long as the table's less one. Called as a model,
    ``draft(tokens, caches)`` returns logits ``(1, 1, vocab)`` for the last position only: 0 on the
    guess, ``-inf`` elsewhere (``q`` one-hot, so a guess is accepted with probability ``p(guess)``),
    or all zeros where nothing matches (``q`` uniform). Exactness does not depend on the draft:
    :func:`speculative_generate` yields the target's tokens whatever it proposes.
    ``new_caches()`` gives one :class:`NGramHistory`; ``cfg`` is the target's config.
    """

    def __init__(self, table: list[dict], cfg):
        if len(table) < 2 or any(not isinstance(t, dict) for t in table):
            raise ValueError("table must be a list of dicts, table[n] mapping n-grams to tokens for n = 1 .. order "
                             "(table[0] unused): build it with NGramDraft.distil(model, ids)")
        self.table, self.cfg, self.order = table, cfg, len(table) - 1

    @classmethod
    @torch.no_grad()
    def distil(cls, model: Transformer, ids, order: int = 4, window: int = 256, batch_size: int = 16,
               continuations: int = 0, new_tokens: int = 200, seed: int = 0, progress=None) -> "NGramDraft":
        """The table from the target ``model``'s greedy predictions on the text ``ids`` (token ids),
        cut into windows of ``window`` tokens; ``progress`` wraps the batches (``tqdm``, say).

        ``continuations`` > 0 adds the target's **own text** (on-policy data, as DistillSpec, Zhou et
        al., 2023, distils a draft): that many greedy continuations of ``new_tokens`` tokens, each
        after a window of ``ids`` drawn with ``random.Random(seed)``, decoded ``batch_size`` at a time
        with the model's KV caches. In greedy text every token is the target's prediction after the
        tokens before it, so its n-grams are counted as they stand. The draft is then scored on text
        of that kind: what the target writes, not the stories it learned from."""
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        if not isinstance(continuations, int) or continuations < 0:
            raise ValueError(f"continuations must be an int >= 0, got {continuations!r}")
        ids = [int(t) for t in (ids.tolist() if torch.is_tensor(ids) else ids)]
        window = min(window, model.cfg.max_seq_len)
        if len(ids) < window:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {window}: give more text")
        windows = torch.tensor(ids[:len(ids) // window * window]).view(-1, window)  # (n_windows, window)
        batches = windows.split(batch_size)
        counts: list[dict] = [{} for _ in range(order + 1)]  # counts[n][n-gram][token] = how often predicted
        model.eval()
        for batch in progress(batches) if progress else batches:
            predicted = model(batch).argmax(dim=-1).tolist()  # (batch, window): the target's next token
            for text, guesses in zip(batch.tolist(), predicted):
                _count_ngrams(counts, text, guesses, 0)
        if continuations:
            prompt_len = min(window, model.cfg.max_seq_len - new_tokens)
            if prompt_len < 1 or len(ids) <= prompt_len:
                raise ValueError(f"new_tokens={new_tokens} leaves no room for a prompt in max_seq_len="
                                 f"{model.cfg.max_seq_len} positions, or the text is too short: ask for fewer")
            rng = random.Random(seed)
            starts = [rng.randrange(len(ids) - prompt_len) for _ in range(continuations)]
            groups = [starts[i:i + batch_size] for i in range(0, continuations, batch_size)]
            for group in progress(groups) if progress else groups:
                prompts = torch.tensor([ids[s:s + prompt_len] for s in group])  # (batch, prompt_len)
                text = torch.cat([prompts, _greedy_batch(model, prompts, new_tokens)], dim=1).tolist()
                for row in text:  # row[i + 1] is the target's greedy choice after row[:i + 1]
                    _count_ngrams(counts, row[:-1], row[1:], prompt_len - 1)
        table = [{}] + [{gram: max(seen, key=seen.get) for gram, seen in level.items()} for level in counts[1:]]
        return cls(table, model.cfg)

    def new_caches(self) -> list[NGramHistory]:
        return [NGramHistory(self.order)]

    def guess(self, history: NGramHistory) -> int | None:
        """The next token after ``history``'s tokens, or ``None`` if no n-gram matches."""
        tokens, found, found_n = history.tokens, None, 0
        for n in range(min(self.order, len(tokens)), 0, -1):  # the table: longest match first
            found = self.table[n].get(tuple(tokens[-n:]))
            if found is not None:
                found_n = n
                break
        for n in range(min(self.order, len(tokens)), max(found_n - 1, 2) - 1, -1):  # the text itself
            here = history.seen[n].get(tuple(tokens[-n:]))
            if here is not None:
                return here
        return found

    def _feed(self, history: NGramHistory, tokens: list[int]) -> NGramHistory:
        """Append ``tokens`` to ``history``; the first tokens it is fed (the prompt) are committed."""
        first = len(history) == 0
        history.tokens.extend(tokens)
        if len(history) > self.cfg.max_seq_len:
            raise ValueError(f"{len(history)} positions do not fit max_seq_len={self.cfg.max_seq_len}")
        if first:
            history.commit(len(history))
        return history

    def __call__(self, tokens: torch.Tensor, caches: list[NGramHistory]) -> torch.Tensor:
        guess = self.guess(self._feed(caches[0], tokens[0].tolist()))
        logits = torch.zeros(1, 1, self.cfg.vocab_size)
        if guess is not None:
            logits.fill_(-math.inf)[0, 0, guess] = 0.0
        return logits

    def propose(self, tokens: list[int], caches: list[NGramHistory], n: int) -> list[int]:
        """Up to ``n`` guesses in one call, each after the ones before it: the tokens that ``n`` calls
        at temperature 0 would draft, as token ids, without logits. ``tokens`` (ids the draft has not
        seen) are fed first. Drafting stops early where no n-gram matches (where a call would return
        uniform logits). The history then holds ``tokens`` and every guess but the last, as after the
        calls (the last guess is fed with the next step's tokens, if accepted)."""
        history = self._feed(caches[0], tokens)
        guesses: list[int] = []
        while len(guesses) < n:
            guess = self.guess(history)
            if guess is None:
                break
            guesses.append(guess)
            history.tokens.append(guess)
        if guesses:
            history.tokens.pop()
        return guesses


def lookup_generate(target, draft, prompt_ids, max_new_tokens: int, gamma: int = 6,
                    stop_tokens: Iterable[int] = (), stats: list | None = None) -> Iterator[int]:
    """Greedy speculative decoding with a draft that proposes token ids, not distributions.

    :func:`speculative_generate` at temperature 0, for a draft with ``draft.propose(tokens, caches, n)``
    (:class:`NGramDraft`): one call drafts up to ``gamma`` tokens, where ``speculative_generate`` makes
    ``gamma`` calls, each returning a row of logits that the loop reduces to its argmax. For a draft
    that costs nothing, that per-call work (tens of microseconds a token) is what is left to save;
    Hugging Face's prompt lookup decoding likewise proposes ids without logits. The draft may propose
    fewer than ``gamma`` tokens, none where nothing matches: the target then checks fewer positions.
    Same arguments (no sampling), output and ``stats`` as ``speculative_generate`` at temperature 0:
    the target's greedy output, token for token. ``TypeError`` if the draft has no ``propose`` (a draft
    model: use ``speculative_generate``); ``ValueError`` as ``speculative_generate``.
    """
    if not callable(getattr(draft, "propose", None)):
        raise TypeError(f"lookup_generate needs a draft that proposes token ids, draft.propose(tokens, caches, n) "
                        f"(an NGramDraft); {type(draft).__name__} has none: decode with speculative_generate")
    check_speculative(gamma, 0.0, target.cfg.vocab_size, draft.cfg.vocab_size)
    prompt = check_prompt(prompt_ids, max_new_tokens, min(target.cfg.max_seq_len, draft.cfg.max_seq_len))
    stop = set(stop_tokens)
    t_caches, d_caches = target.new_caches(), draft.new_caches()
    with torch.no_grad():
        if len(prompt) > 1:  # the target's prefill, as in speculative_generate; the draft reads the prompt below
            getattr(target, "prefill", target)(torch.tensor([prompt[:-1]]), t_caches)
    todo, last, committed, produced = prompt, prompt[-1], len(prompt), 0  # todo: tokens the draft has not seen
    while produced < max_new_tokens:
        drafted = draft.propose(todo, d_caches, min(gamma, max_new_tokens - produced - 1))
        g = len(drafted)
        with torch.no_grad():  # the target's argmax after last and after each drafted token: (g + 1,)
            best = target(torch.tensor([[last] + drafted]), t_caches)[0].max(dim=-1).indices.tolist()
        n = next((i for i, x in enumerate(drafted) if x != best[i]), g)
        new = drafted[:n] + [best[n]]
        if stats is not None:
            stats.append((g, n))
        committed += len(new)
        rollback(t_caches, committed - 1)
        if n < g:  # a guess rejected: the draft forgets it and what followed, and reads the target's token
            rollback(d_caches, committed - 1)
        todo = (drafted[-1:] if n == g else []) + new[-1:]  # all accepted: its last guess was never fed either
        last = new[-1]
        for token in new:
            if token in stop:
                return
            yield token
        produced += len(new)  # at most what was left: gamma was capped above


def _count_ngrams(counts: list[dict], text: list[int], guesses: list[int], first: int) -> None:
    """Count ``guesses[i]`` after every n-gram of ``text`` ending at position ``i`` (``i >= first``),
    ``counts[n][n-gram][token]``, n = 1 .. len(counts) - 1."""
    order = len(counts) - 1
    for i in range(first, len(guesses)):
        guess = guesses[i]
        for n in range(1, min(order, i + 1) + 1):
            seen = counts[n].setdefault(tuple(text[i + 1 - n:i + 1]), {})
            seen[guess] = seen.get(guess, 0) + 1


@torch.no_grad()
def _greedy_batch(model: Transformer, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``(batch, new_tokens)``: greedy continuations of equal-length ``prompts`` ``(batch, len)``, cached."""
    caches = model.new_caches()
    logits = model(prompts, caches)[:, -1]  # (batch, vocab)
    out = []
    for step in range(new_tokens):
        out.append(logits.argmax(dim=-1, keepdim=True))  # (batch, 1)
        if step < new_tokens - 1:
            logits = model(out[-1], caches)[:, -1]
    return torch.cat(out, dim=1)
