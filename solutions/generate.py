r"""Generation: from next-token logits to text, one token at a time.

At every position a language model returns logits :math:`z \in \mathbb{R}^V` over the
vocabulary. Generating text is a loop: pick a next token from the last position's logits,
append it, run the model again. How the token is picked decides what the text reads like:

* **greedy** decoding takes :math:`\arg\max_i z_i`: deterministic, and prone to loops;
* **sampling** draws from :math:`p = \mathrm{softmax}(z / T)`, reshaped by a
  **temperature** :math:`T` (below 1 sharper, above 1 flatter) and restricted to a
  candidate set: the **top-k** most likely tokens (Fan et al., 2018) and/or the smallest
  **nucleus** of tokens whose probability reaches **top-p** (Holtzman et al., 2020).
  The filters apply in Hugging Face's order: temperature, then top-k, then top-p.

Running the whole sequence through the model for every new token repeats all earlier
work. The **KV cache** keeps each layer's keys and values: the prompt is run once
(*prefill*), then each step feeds only the newest token, attending to the cached past.
Greedy output is the same either way; the cached loop does ``O(1)`` new positions per step
instead of ``O(t)``.

This module has, in the order the chapter builds them:

* :func:`check_sampling`: the sampling parameters, validated (a ``ValueError`` says what to change);
* :func:`apply_temperature`, :func:`top_k_filter`, :func:`top_p_filter`: logits to logits,
  removed tokens set to :math:`-\infty`;
* :func:`sample_next`: greedy, or one draw by the inverse CDF from a given uniform ``u``;
* :func:`generate`: the decoding loop, with or without the KV cache, stop tokens, yielding
  each token as it is produced (streaming); :func:`generate_from_weights` runs it on a model
  given as plain data (what the chapter's checkpoint calls);
* :func:`stream_text`: text pieces as tokens arrive, never cutting a UTF-8 character.

Randomness is explicit: :func:`sample_next` takes its uniform numbers ``u`` and
:func:`generate` a ``torch.Generator``, so that two runs print the same text.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterable, Iterator

import torch

from solutions.model import LlamaConfig, Transformer

# ------------------------------------------------------------------- the parameters


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    """Raise ``ValueError`` naming the fix if a sampling parameter is out of range.

    ``temperature`` >= 0 and finite (0 = greedy); ``top_k`` None (off) or an int >= 1;
    ``top_p`` in (0, 1] (1 = off).
    """
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy decoding, 1 = the model's own "
                         f"distribution), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be None (no top-k filter) or an int >= 1 (how many of the most likely "
                         f"tokens to keep), got {top_k!r}")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter; 0.9 keeps the most likely tokens "
                         f"up to 90% of the probability), got {top_p!r}")


# -------------------------------------------------------------------- the filters


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Scale the logits by the temperature :math:`T`: return :math:`z / T`.

    .. math:: p_i(T) = \frac{e^{z_i / T}}{\sum_j e^{z_j / T}}

    :math:`T < 1` sharpens the distribution (as :math:`T \to 0`, all mass goes to the
    argmax: greedy decoding), :math:`T > 1` flattens it towards uniform, :math:`T = 1` leaves
    it unchanged. Divide the *logits*: dividing probabilities by :math:`T` changes nothing
    once they are normalised again. ``logits``: ``(..., vocab)``, not modified. ``temperature``
    must be > 0 (``ValueError`` otherwise: 0 means greedy, which takes the argmax instead).
    """
    if not temperature > 0:
        raise ValueError(f"apply_temperature needs a temperature > 0, got {temperature!r}: 0 is greedy decoding "
                         "(take logits.argmax(-1) instead), and a negative one would favour the least likely tokens")
    return logits / temperature  # (..., vocab)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    r"""Keep the ``k`` largest logits of each row; set the others to :math:`-\infty`.

    A token is kept when its logit is at least the ``k``-th largest of its row, so tokens
    tied with the ``k``-th are all kept (as Hugging Face's ``TopKLogitsWarper`` and nanoGPT
    do). ``k`` larger than the vocabulary keeps every token. ``logits``: ``(..., vocab)``,
    not modified; ``k``: an int >= 1 (``ValueError`` otherwise).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1 (how many of the most likely tokens to keep), got {k!r}")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))  # (..., vocab)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    r"""Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``p``.

    Sort each row's probabilities :math:`p_{(1)} \ge p_{(2)} \ge \dots`; token :math:`(j)` is
    kept when the probability of the tokens *before* it is below ``p``:

    .. math:: \text{keep } (j) \iff \sum_{i < j} p_{(i)} < p

    So the token whose cumulative probability crosses ``p`` is kept, and the most likely
    token always is (Hugging Face's ``TopPLogitsWarper``). The others become
    :math:`-\infty`. ``p = 1`` keeps every token. ``logits``: ``(..., vocab)``, not
    modified (tokens already at :math:`-\infty` have probability 0 and stay removed);
    ``p`` in (0, 1] (``ValueError`` otherwise).
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1] (0.9 keeps the most likely tokens up to 90% of the probability; "
                         f"1 keeps all), got {p!r}")
    if p == 1:
        return logits.clone()
    probs = torch.softmax(logits.float(), dim=-1)  # (..., vocab)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (..., vocab): mass of the more likely tokens
    remove_sorted = before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))  # (..., vocab)


# ------------------------------------------------------------------- one next token


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float,
                u: torch.Tensor | None) -> torch.Tensor:
    r"""The next token of each row: greedy if ``temperature`` is 0, else one sample.

    Greedy: :math:`\arg\max_i z_i` (the first one on ties); ``u``, ``top_k`` and ``top_p``
    are ignored. Sampling: temperature, then :func:`top_k_filter` (unless ``top_k`` is
    None), then :func:`top_p_filter` (unless ``top_p`` is 1), then the softmax, which
    renormalises over the tokens left. The sample is drawn by the **inverse CDF**: with
    :math:`F_j = \sum_{i \le j} p_i`, the token is the first :math:`j` with
    :math:`F_j > u`, so that token :math:`j` is drawn with probability :math:`p_j` when
    :math:`u \sim U[0, 1)` (what ``torch.multinomial`` does inside).

    ``logits``: ``(..., vocab)``; ``u``: ``(...)`` uniform numbers in [0, 1), one per row
    (drawn here with the global generator if None). Returns ``(...)`` int64 token ids.
    Parameters out of range raise ``ValueError`` (see :func:`check_sampling`).
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)  # (...)
    if u is None:
        u = torch.rand(logits.shape[:-1], device=logits.device)
    z = apply_temperature(logits, temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p < 1:
        z = top_p_filter(z, top_p)
    probs = torch.softmax(z.float(), dim=-1)  # (..., vocab): the removed tokens get 0
    cdf = probs.cumsum(dim=-1)  # (..., vocab), non-decreasing, ending at 1 (up to rounding)
    # u * cdf[-1] instead of u: rounding can leave cdf[-1] a hair below 1, and u must
    # still land on a token of non-zero probability.
    target = (u.to(cdf) * cdf[..., -1]).unsqueeze(-1)  # (..., 1), on cdf's device
    return (cdf <= target).sum(dim=-1)  # (...): how many tokens end at or below u = the first above it


# ---------------------------------------------------------------------- the loop


def generate(model: Transformer, prompt_ids, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float = 1.0, stop_tokens: Iterable[int] = (),
             use_cache: bool = True, generator: torch.Generator | None = None) -> Iterator[int]:
    r"""Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens, yielding each one as it is produced.

    Each step takes the logits of the *last* position, picks the next token with
    :func:`sample_next` (for ``temperature`` > 0 with ``u = torch.rand(1, generator=generator)``,
    one draw per new token; greedy draws nothing), and yields it as an int.

    With ``use_cache`` (the KV cache): one set of ``model.new_caches()``; the prompt is run
    once (*prefill*), then each step feeds *only the newest token*, ``(1, 1)``: the model
    reads the earlier keys and values from the caches and places the token after them.
    Without: each step runs the whole sequence so far. Greedy output is the same both ways.

    Generation stops after ``max_new_tokens`` new tokens (the prompt does not count), or
    when a token in ``stop_tokens`` is produced: that token is not yielded. Stop tokens
    inside the prompt do not stop anything.

    ``model``: a :class:`~solutions.model.Transformer`; ``prompt_ids``: a list of ints or a
    1-D tensor, at least one token. ``ValueError`` (when iteration starts) if the prompt is
    empty, if ``max_new_tokens`` is negative, if ``len(prompt) + max_new_tokens`` exceeds
    ``model.cfg.max_seq_len``, or if a sampling parameter is out of range (see :func:`check_sampling`).
    """
    check_sampling(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    device = model.embed_tokens.weight.device
    tokens = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).reshape(1, -1)  # (1, prompt_len)
    n_prompt, context = tokens.shape[1], model.cfg.max_seq_len
    if n_prompt == 0:
        raise ValueError("the prompt is empty: give at least one token (for example the <|endoftext|> id)")
    if n_prompt + max_new_tokens > context:
        raise ValueError(f"a prompt of {n_prompt} tokens plus max_new_tokens={max_new_tokens} does not fit the "
                         f"model's context of {context} positions: ask for at most {max(context - n_prompt, 0)} "
                         f"new tokens, or keep only the last {max(context - max_new_tokens, 0)} tokens of the prompt")
    stop = set(stop_tokens)
    caches = model.new_caches() if use_cache else None
    new = tokens  # what the model has not seen yet: the whole prompt, then one token at a time
    for _ in range(max_new_tokens):
        with torch.no_grad():  # only around the model: a `yield` inside would leak no_grad to the caller
            logits = model(new, caches) if use_cache else model(tokens)  # (1, seq, vocab)
        u = torch.rand(1, generator=generator) if temperature > 0 else None  # a CPU generator, any device
        next_id = sample_next(logits[:, -1], temperature, top_k, top_p, u)  # (1,)
        token = int(next_id.item())
        if token in stop:
            return
        yield token
        new = next_id.view(1, 1)  # (1, 1)
        tokens = torch.cat([tokens, new], dim=1)  # (1, seq + 1)


def generate_from_weights(config: dict, weights: dict[str, torch.Tensor], prompt: list[int], options: dict) -> dict:
    """:func:`generate` on a model given as plain data: the chapter's checkpoint calls this.

    Builds ``Transformer(LlamaConfig(**config))``, loads ``weights``, runs
    ``generate(model, prompt, **options)`` (``options["seed"]``, if there, seeds its
    ``torch.Generator``) and returns ``{"tokens": [...], "each position run once": bool}``:
    the tokens it yields (at most ``max_new_tokens + 1``: a generator that never ends shows as
    one token too many instead of running forever), and whether the model ran on no more positions in all than the
    prompt and the new tokens hold, as cached decoding does (running the whole sequence again
    at every step does not).
    """
    model = Transformer(LlamaConfig(**config))
    model.load_state_dict(weights)
    runs = []  # how many positions each call of the model ran

    def count(module, args, kwargs):
        runs.append((args[0] if args else kwargs["tokens"]).shape[-1])

    model.register_forward_pre_hook(count, with_kwargs=True)
    options = dict(options)
    seed = options.pop("seed", None)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    n = options.get("max_new_tokens")
    limit = max(n, 0) + 1 if isinstance(n, int) and not isinstance(n, bool) else None  # None: generate refuses it
    tokens = []
    for token in generate(model, prompt, generator=generator, **options):
        tokens.append(token)
        if len(tokens) == limit:  # one more than asked for: enough to show a loop that never ends
            break
    return {"tokens": tokens, "each position run once": sum(runs) <= len(prompt) + len(tokens)}


# ---------------------------------------------------------------------- streaming


def stream_text(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode tokens to text as they arrive, one piece per token (possibly empty pieces skipped).

    A byte-level BPE token can end in the middle of a UTF-8 character (``é`` is two bytes,
    ``🙂`` four): decoding each token on its own would print ``�``. An incremental UTF-8
    decoder holds back an incomplete character until its last byte arrives.
    ``tokenizer``: a ``tiktoken.Encoding``.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in token_ids:
        piece = decoder.decode(tokenizer.decode_single_token_bytes(token))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
