r"""Mixture of experts: a router sends each token to k of N SwiGLU experts.

A dense feed-forward network spends the same compute on every token. A mixture-of-experts
(MoE) layer holds :math:`N` feed-forward *experts* and a *router* that picks :math:`k \ll N`
of them per token (Shazeer et al., 2017; Switch Transformer, Fedus et al., 2021):

.. math:: y = \sum_{i \in \mathrm{TopK}(x)} g_i(x)\, E_i(x)

so parameters grow with :math:`N` while compute grows with :math:`k` only. Mixtral 8x7B
(:math:`N = 8, k = 2`) holds 47B parameters and uses 13B per token; DeepSeek-V3
(256 fine-grained routed experts, :math:`k = 8`, plus one shared expert) holds 671B and
uses 37B.

This module has, in the order the chapter builds them:

* :func:`top_k_router`: softmax over experts, top-k, renormalise (Mixtral);
* :func:`dispatch` / :func:`combine`: the sort-based token shuffle around the experts;
  :func:`moe_loop` (one expert at a time) and :func:`moe_dense` (every expert on every
  token, then mask) compute the same output;
* :func:`load_balancing_loss`: Switch's auxiliary loss against routing collapse;
* :func:`fine_grained_layout`: DeepSeekMoE's fine-grained and shared experts;
* :func:`aux_free_router` / :func:`update_bias`: DeepSeek-V3's auxiliary-loss-free
  balancing with a per-expert bias;
* :class:`MoEConfig` / :class:`MoE`: the layer, and :func:`train_toy_moe`, which shows
  routing collapse and its two cures.

Tokens are flattened to ``(n_tokens, dim)`` inside the layer; expert ids are ``int64``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from solutions.layers import SwiGLU

# ---------------------------------------------------------------------------- routing


def top_k_router(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Mixtral's router: a softmax over the experts, keep the ``top_k`` largest, renormalise.

    .. math::
        p = \mathrm{softmax}(\text{logits}), \qquad
        w_j = \frac{p_{i_j}}{\sum_{l=1}^{k} p_{i_l}}, \quad i_1, \dots, i_k = \mathrm{TopK}(p)

    The softmax runs over the *experts* (last dimension) in float32. Renormalising makes
    each token's ``k`` weights sum to 1; it is the same as a softmax over the ``k`` chosen
    logits only. (Switch, with ``k = 1``, keeps the raw probability instead, so that the
    router gets a gradient through the weight; DeepSeek-V3 scores with a sigmoid instead
    of a softmax: see :func:`aux_free_router`.)

    ``logits``: ``(n_tokens, n_experts)``. Returns

    * ``weights``: ``(n_tokens, top_k)`` float32, each row summing to 1;
    * ``indices``: ``(n_tokens, top_k)`` int64, the chosen experts, largest weight first
      (the order ``torch.topk`` returns);
    * ``probs``: ``(n_tokens, n_experts)`` float32, the full softmax (for the
      load-balancing loss).

    Raises ``ValueError`` if ``top_k`` is not in ``1..n_experts``.
    """
    n_experts = logits.shape[-1]
    if not 1 <= top_k <= n_experts:
        raise ValueError(
            f"top_k must be between 1 and n_experts ({n_experts}), got {top_k}: each token "
            "is sent to top_k different experts"
        )
    probs = F.softmax(logits.float(), dim=-1)  # (n_tokens, n_experts)
    top_probs, indices = probs.topk(top_k, dim=-1)  # (n_tokens, top_k), largest first
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (n_tokens, top_k)
    return weights, indices, probs


# ------------------------------------------------------------------ dispatch / combine


def dispatch(x: torch.Tensor, indices: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Group the tokens by expert: one sort instead of one scan per expert.

    Each token appears ``top_k`` times, once per chosen expert. Number the
    ``n_tokens * top_k`` (token, slot) pairs in row-major order, ``flat = token * top_k + slot``,
    and sort them by expert id with a **stable** sort, so that within an expert the tokens
    keep their order. Then expert ``e`` reads the contiguous rows
    ``x_sorted[start_e : start_e + counts[e]]``: one gather feeds every expert.

    ``x``: ``(n_tokens, dim)``; ``indices``: ``(n_tokens, top_k)`` expert ids. Returns

    * ``x_sorted``: ``(n_tokens * top_k, dim)``, row ``r`` is ``x[order[r] // top_k]``;
    * ``order``: ``(n_tokens * top_k,)`` int64, the flat (token, slot) number of each row;
    * ``counts``: ``(n_experts,)`` int64, how many rows each expert gets (zeros included).

    Raises ``ValueError`` for an expert id outside ``0..n_experts-1``.
    """
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(
            f"expert ids must be in 0..{n_experts - 1}, got ids from {int(indices.min())} to "
            f"{int(indices.max())}: indices come from a router over n_experts={n_experts} experts"
        )
    top_k = indices.shape[-1]
    flat = indices.reshape(-1)  # (n_tokens * top_k,) expert of each (token, slot)
    order = torch.argsort(flat, stable=True)  # (n_tokens * top_k,) grouped by expert
    counts = torch.bincount(flat, minlength=n_experts)  # (n_experts,)
    x_sorted = x[order // top_k]  # (n_tokens * top_k, dim)
    return x_sorted, order, counts


def combine(y_sorted: torch.Tensor, weights: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    r"""Undo :func:`dispatch`: weight each expert output and add it back to its token.

    .. math:: y_t = \sum_{j=1}^{k} w_{t,j}\, E_{i_{t,j}}(x_t)

    Row ``r`` of ``y_sorted`` belongs to token ``order[r] // top_k`` and carries the weight
    ``weights.flatten()[order[r]]``. ``index_add_`` along the token axis sums the ``top_k``
    rows of each token, wherever the sort put them.

    ``y_sorted``: ``(n_tokens * top_k, dim)``, the experts' outputs in dispatch order;
    ``weights``: ``(n_tokens, top_k)``; ``order``: from :func:`dispatch`.
    Returns ``(n_tokens, dim)``.
    """
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order].to(y_sorted.dtype)  # (n_tokens * top_k,) weight of each row
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])  # (n_tokens, dim)
    return out.index_add_(0, order // top_k, y_sorted * w[:, None])


def moe_loop(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts) -> torch.Tensor:
    """The per-expert loop (as in Hugging Face's Mixtral): for each expert, find its tokens,
    run it on them, add the weighted output back. Simple, but it scans ``indices`` once per
    expert. ``x``: ``(n_tokens, dim)``; ``experts``: a list of modules. Returns ``(n_tokens, dim)``."""
    out = torch.zeros_like(x)  # (n_tokens, dim)
    for e, expert in enumerate(experts):
        token, slot = torch.where(indices == e)  # the tokens routed to e, and in which slot
        if token.numel() == 0:
            continue
        y = expert(x[token]) * weights[token, slot, None].to(x.dtype)  # (n_e, dim)
        out.index_add_(0, token, y)
    return out


def moe_sorted(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts) -> torch.Tensor:
    """Sort-based MoE: :func:`dispatch`, each expert on its contiguous slice, :func:`combine`.
    Same output as :func:`moe_loop`. ``x``: ``(n_tokens, dim)``. Returns ``(n_tokens, dim)``."""
    x_sorted, order, counts = dispatch(x, indices, len(experts))
    chunks = x_sorted.split(counts.tolist())  # expert e's rows, contiguous
    y_sorted = torch.cat([expert(chunk) for expert, chunk in zip(experts, chunks)])  # (n_tokens * top_k, dim)
    return combine(y_sorted, weights, order)


def moe_dense(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts) -> torch.Tensor:
    """Compute every expert on every token, then mask: the definition, at ``n_experts / top_k``
    times the compute of :func:`moe_sorted`. ``x``: ``(n_tokens, dim)``. Returns ``(n_tokens, dim)``."""
    gates = torch.zeros(x.shape[0], len(experts), dtype=x.dtype, device=x.device)  # (n_tokens, n_experts)
    gates.scatter_(1, indices, weights.to(x.dtype))  # 0 for the experts not chosen
    y = torch.stack([expert(x) for expert in experts], dim=1)  # (n_tokens, n_experts, dim)
    return (gates[..., None] * y).sum(dim=1)


# --------------------------------------------------------------------- load balancing


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    r"""Switch Transformer's auxiliary loss: small when the experts share the tokens evenly.

    .. math:: \mathcal{L}_{\text{aux}} = N \sum_{i=1}^{N} f_i\, P_i

    * :math:`f_i`: the fraction of the ``n_tokens * top_k`` routing assignments that went to
      expert :math:`i` (every one of the k choices counts; :math:`\sum_i f_i = 1`). Counts of
      an argmax: no gradient flows through it.
    * :math:`P_i`: the mean router probability of expert :math:`i` over the tokens,
      differentiable. Lowering :math:`P_i` for the busiest experts is how the loss pushes.

    With :math:`f` and :math:`P` both uniform the loss is 1, its minimum, whatever ``top_k``;
    with every token on one expert it is :math:`N`. This is DeepSeek-V2/V3's :math:`f`
    (theirs carries the factor :math:`N` inside) and Switch's for ``top_k = 1``; Hugging
    Face's Mixtral code omits the :math:`1/k`, which only rescales the loss coefficient.

    ``probs``: ``(n_tokens, n_experts)``, the full softmax; ``indices``: ``(n_tokens, top_k)``.
    Returns a 0-dimensional float32 tensor. Raises ``ValueError`` for an empty batch
    (no token: the mean would be 0 / 0).
    """
    n_tokens, top_k = indices.shape
    if n_tokens == 0:
        raise ValueError("the load-balancing loss needs at least one token (the batch is empty)")
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts)  # (n_experts,)
    f = counts.float() / (n_tokens * top_k)  # (n_experts,) sums to 1
    P = probs.float().mean(dim=0)  # (n_experts,) mean probability per expert
    return n_experts * (f * P).sum()


# ------------------------------------------------------------- fine-grained + shared


def fine_grained_layout(n_experts: int, top_k: int, hidden_dim: int, granularity: int, n_shared: int) -> tuple[int, int, int]:
    r"""DeepSeekMoE's layout, derived from a coarse MoE of the same size and compute.

    Start from ``n_experts`` experts of hidden size ``hidden_dim`` with ``top_k`` active.

    1. **Fine-grained segmentation**: split every expert into ``granularity`` (:math:`m`)
       experts of hidden size ``hidden_dim / m`` and activate :math:`mK` of them: the same
       parameters and FLOPs, but :math:`\binom{mN}{mK}` possible expert combinations
       instead of :math:`\binom{N}{K}`.
    2. **Shared-expert isolation**: :math:`K_s` = ``n_shared`` of the :math:`mN` small
       experts see *every* token, outside the router (common knowledge lives there once,
       not copied into every routed expert). To keep the compute, the router now picks
       :math:`mK - K_s` of the remaining :math:`mN - K_s`.

    The layer's output is then :math:`\sum_{\text{shared}} E_s(x) + \sum_{\text{routed}} g_i(x) E_i(x)`
    (see :class:`MoE`). Returns ``(n_routed, routed_top_k, expert_hidden_dim)``. Raises
    ``ValueError`` if ``n_experts``, ``top_k``, ``hidden_dim`` or ``granularity`` is below 1
    or ``n_shared`` below 0, if ``top_k > n_experts``, if ``hidden_dim`` does not split into
    ``granularity`` equal parts, or if no routed expert would be left active.
    """
    if min(n_experts, top_k, hidden_dim, granularity) < 1 or n_shared < 0:
        raise ValueError(
            f"need n_experts, top_k, hidden_dim, granularity >= 1 and n_shared >= 0, got "
            f"{n_experts}, {top_k}, {hidden_dim}, {granularity} and {n_shared}"
        )
    if top_k > n_experts:
        raise ValueError(f"top_k ({top_k}) must be at most n_experts ({n_experts})")
    if hidden_dim % granularity:
        raise ValueError(
            f"hidden_dim ({hidden_dim}) must be divisible by granularity ({granularity}): each "
            "expert is split into granularity equal experts"
        )
    if n_shared >= granularity * top_k:
        raise ValueError(
            f"n_shared ({n_shared}) must be less than granularity * top_k ({granularity * top_k}): "
            "the shared experts take their compute from the routed ones, and at least one routed "
            "expert must stay active"
        )
    n_routed = granularity * n_experts - n_shared
    routed_top_k = granularity * top_k - n_shared
    return n_routed, routed_top_k, hidden_dim // granularity


# ------------------------------------------------------ auxiliary-loss-free balancing


def aux_free_router(logits: torch.Tensor, bias: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""DeepSeek-V3's router: sigmoid scores, a per-expert bias that steers *selection only*.

    .. math::
        s_i = \sigma(\text{logit}_i), \qquad
        \mathcal{T} = \mathrm{TopK}(s_i + b_i), \qquad
        w_i = \frac{s_i}{\sum_{j \in \mathcal{T}} s_j} \quad (i \in \mathcal{T})

    The bias :math:`b` decides *which* experts a token visits; the weights come from the
    unbiased scores, so balancing never distorts what an expert's output is worth (as an
    auxiliary loss's gradient does). Each score is a sigmoid of its own: experts do not
    compete inside a softmax.

    ``logits``: ``(n_tokens, n_experts)``; ``bias``: ``(n_experts,)``. Returns ``weights``
    ``(n_tokens, top_k)`` float32, rows summing to 1, and ``indices`` ``(n_tokens, top_k)``
    int64, in decreasing biased score (the order of ``torch.topk``). Raises ``ValueError``
    if ``top_k`` is not in ``1..n_experts``.
    """
    n_experts = logits.shape[-1]
    if not 1 <= top_k <= n_experts:
        raise ValueError(
            f"top_k must be between 1 and n_experts ({n_experts}), got {top_k}: each token "
            "is sent to top_k different experts"
        )
    scores = torch.sigmoid(logits.float())  # (n_tokens, n_experts)
    indices = (scores + bias).topk(top_k, dim=-1).indices  # (n_tokens, top_k) the bias picks
    chosen = scores.gather(-1, indices)  # (n_tokens, top_k) unbiased scores weigh
    weights = chosen / chosen.sum(dim=-1, keepdim=True)
    return weights, indices


def update_bias(bias: torch.Tensor, indices: torch.Tensor, n_experts: int, gamma: float) -> torch.Tensor:
    r"""One step of DeepSeek-V3's bias update, after each training step:

    .. math:: b_i \leftarrow b_i + \gamma\, \mathrm{sign}(\bar{c} - c_i)

    :math:`c_i` is the number of (token, slot) assignments expert :math:`i` received in the
    batch (all ``top_k`` choices count) and :math:`\bar{c}` their mean: overloaded experts
    lose :math:`\gamma`, underloaded ones gain it, exactly balanced ones stay. Not a
    gradient step: the bias is a buffer, and only the sign of the load error matters.

    ``bias``: ``(n_experts,)`` (not modified); ``indices``: ``(n_tokens, top_k)``.
    Returns the new bias, ``(n_experts,)``.
    """
    load = torch.bincount(indices.reshape(-1), minlength=n_experts).float()  # (n_experts,)
    error = load.mean() - load  # > 0: underloaded
    return bias + gamma * torch.sign(error).to(bias.dtype)


# -------------------------------------------------------------------------- the layer


@dataclass
class MoEConfig:
    """Shape of an MoE layer. ``hidden_dim`` is *each* expert's SwiGLU hidden size.

    ``router="softmax"``: Mixtral's :func:`top_k_router`, balanced by the auxiliary
    :func:`load_balancing_loss` (``MoE.aux_loss``, to add to the training loss).
    ``router="sigmoid"``: DeepSeek-V3's :func:`aux_free_router`, balanced by the bias
    (``MoE.update_expert_bias()`` after each optimiser step, rate ``bias_update_rate``).
    ``n_shared_experts`` experts of the same size see every token (DeepSeekMoE).
    """

    dim: int
    hidden_dim: int
    n_experts: int
    top_k: int
    n_shared_experts: int = 0
    router: str = "softmax"
    bias_update_rate: float = 1e-3

    def __post_init__(self):
        for name in ("dim", "hidden_dim", "n_experts", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MoEConfig.{name} must be a positive int, got {value!r}")
        if self.top_k > self.n_experts:
            raise ValueError(
                f"MoEConfig.top_k ({self.top_k}) must be at most n_experts ({self.n_experts}): "
                "each token is sent to top_k different experts"
            )
        if not isinstance(self.n_shared_experts, int) or self.n_shared_experts < 0:
            raise ValueError(f"MoEConfig.n_shared_experts must be an int >= 0, got {self.n_shared_experts!r}")
        if self.router not in ("softmax", "sigmoid"):
            raise ValueError(
                f"MoEConfig.router must be 'softmax' (Mixtral, auxiliary loss) or 'sigmoid' "
                f"(DeepSeek-V3, bias balancing), got {self.router!r}"
            )
        if not self.bias_update_rate >= 0:
            raise ValueError(f"MoEConfig.bias_update_rate must be >= 0, got {self.bias_update_rate!r}")


class MoE(nn.Module):
    r"""A sparse MoE feed-forward layer: router, routed SwiGLU experts, optional shared experts.

    .. math:: y = \sum_{s=1}^{K_s} E^{\text{shared}}_s(x) + \sum_{i \in \mathcal{T}(x)} w_i(x)\, E_i(x)

    The :math:`K_s` shared experts are stored as one SwiGLU of hidden size
    :math:`K_s \cdot` ``hidden_dim`` (as DeepSeek does): a SwiGLU's hidden units act
    independently, so one wide SwiGLU *is* the sum of :math:`K_s` narrow ones.

    ``forward(x)``: ``(..., dim) -> (..., dim)``. It leaves behind ``aux_loss`` (the
    load-balancing loss of this batch; 0 for the sigmoid router) and ``last_indices``
    (this batch's expert choices, for :meth:`update_expert_bias` and for plots).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(SwiGLU(cfg.dim, cfg.hidden_dim) for _ in range(cfg.n_experts))
        self.shared_experts = SwiGLU(cfg.dim, cfg.hidden_dim * cfg.n_shared_experts) if cfg.n_shared_experts else None
        if cfg.router == "sigmoid":
            self.register_buffer("expert_bias", torch.zeros(cfg.n_experts))  # not a parameter
        self.aux_loss = torch.zeros(())
        self.last_indices = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (n_tokens, dim)
        logits = self.gate(x)  # (n_tokens, n_experts)
        if self.cfg.router == "softmax":
            weights, indices, probs = top_k_router(logits, self.cfg.top_k)
            self.aux_loss = load_balancing_loss(probs, indices, self.cfg.n_experts)
        else:
            weights, indices = aux_free_router(logits, self.expert_bias, self.cfg.top_k)
            self.aux_loss = logits.new_zeros(())
        out = moe_sorted(x, weights.to(x.dtype), indices, self.experts)  # (n_tokens, dim)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)  # every token, weight 1
        self.last_indices = indices.detach()
        return out.reshape(shape)

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """After an optimiser step: nudge the bias towards balance (sigmoid router only)."""
        if self.cfg.router != "sigmoid":
            raise ValueError("update_expert_bias() is for router='sigmoid' (the softmax router balances with aux_loss)")
        if self.last_indices is None:
            raise ValueError("call the layer on a batch first: the bias follows that batch's expert load")
        new = update_bias(self.expert_bias, self.last_indices, self.cfg.n_experts, self.cfg.bias_update_rate)
        self.expert_bias.copy_(new)


# ------------------------------------------------------------- routing collapse, live


def toy_task(n_tokens: int, dim: int, n_clusters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens from ``n_clusters`` clusters that share a large common component (as hidden
    states in a language model do), each cluster with its own target map: a task where
    specialised experts help. Returns ``(x, y)``, each ``(n_tokens, dim)``; the same
    ``generator`` state gives the same task (cluster centres and maps are drawn first)."""
    common = 3.0 * torch.randn(dim, generator=generator)  # shared by every token
    centres = torch.randn(n_clusters, dim, generator=generator)  # (n_clusters, dim)
    maps = torch.randn(n_clusters, dim, dim, generator=generator) / math.sqrt(dim)  # (n_clusters, dim, dim)
    cluster = torch.randint(n_clusters, (n_tokens,), generator=generator)  # (n_tokens,)
    noise = 0.3 * torch.randn(n_tokens, dim, generator=generator)
    x = common + centres[cluster] + noise  # (n_tokens, dim)
    y = torch.tanh(torch.einsum("nd,nde->ne", centres[cluster] + noise, maps[cluster]))  # (n_tokens, dim)
    return x, y


def train_toy_moe(
    balance: str,
    steps: int = 300,
    seed: int = 0,
    dim: int = 16,
    hidden_dim: int = 32,
    n_experts: int = 8,
    top_k: int = 2,
    batch: int = 256,
    lr: float = 3e-3,
    aux_coef: float = 0.01,
    bias_rate: float = 1e-2,
) -> dict:
    """Train one MoE layer on :func:`toy_task` and record the expert load at every step.

    ``balance``: ``"none"`` (softmax router, no balancing), ``"aux_loss"`` (softmax router
    + ``aux_coef`` * :func:`load_balancing_loss`) or ``"aux_free"`` (sigmoid router + bias
    updated at rate ``bias_rate``). Returns ``{"load": (steps, n_experts)`` fraction of the
    assignments each expert got, ``"loss": [...]`` the task loss per step ``}``.
    """
    if balance not in ("none", "aux_loss", "aux_free"):
        raise ValueError(f"balance must be 'none', 'aux_loss' or 'aux_free', got {balance!r}")
    torch.manual_seed(seed)  # the layer's initial weights
    router = "sigmoid" if balance == "aux_free" else "softmax"
    moe = MoE(MoEConfig(dim, hidden_dim, n_experts, top_k, router=router, bias_update_rate=bias_rate))
    opt = torch.optim.AdamW(moe.parameters(), lr=lr, weight_decay=0.0)
    x_all, y_all = toy_task(steps * batch, dim, n_experts, torch.Generator().manual_seed(1000 + seed))
    load, losses = [], []
    for step in range(steps):
        x, y = x_all[step * batch : (step + 1) * batch], y_all[step * batch : (step + 1) * batch]
        loss = F.mse_loss(moe(x), y)
        total = loss + aux_coef * moe.aux_loss if balance == "aux_loss" else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if balance == "aux_free":
            moe.update_expert_bias()
        counts = torch.bincount(moe.last_indices.reshape(-1), minlength=n_experts)
        load.append(counts.float() / counts.sum())
        losses.append(loss.item())
    return {"load": torch.stack(load), "loss": losses}
