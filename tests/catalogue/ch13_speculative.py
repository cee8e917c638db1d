"""Wrong answers to chapter 13's checkpoints, as learners write them.

The acceptance-step mistakes are whole functions in a learner's style (a loop over the drafted
tokens, ``torch.multinomial``-free draws by the inverse CDF as chapter 07 taught). The loop
mistakes are whole ``speculative_generate`` functions, each run through the same adapter as the
notebook's given ``speculative_from_weights``, and each built on the correct ``accept_draft``
unless the mistake is in the acceptance itself. The multi-token loss mistakes (bonus) are whole
``mtp_loss`` functions, each keeping the shape checks a learner writes first.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from autograder.checks.ch13_speculative import _through_adapter
from solutions.generate import check_sampling
from solutions.speculative import accept_draft, check_speculative, expected_tokens, rollback, to_probs

from . import mistake


def _draw(probs, u):
    cdf = probs.cumsum(-1)
    return min(int((cdf <= u * cdf[-1]).sum()), probs.shape[-1] - 1)


# --------------------------------------------------------------------------- 13.accept


@mistake("13.accept", "p_only")
def accept_with_the_target_probability_alone(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] < p[i, x]:  # "the target likes it enough"
            out.append(x)
        else:
            residual = torch.clamp(p[i] - q[i], min=0)
            out.append(_draw(residual / residual.sum(), float(u[-1])))
            return out
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "p_only")
def accept_when_the_target_probability_beats_u_with_min(p, q, drafted, u):
    tokens = []
    for i in range(len(drafted)):
        x = drafted[i]
        if float(u[i]) < min(1.0, float(p[i, x])):
            tokens.append(int(x))
            continue
        r = (p[i] - q[i]).clamp_min(0)
        tokens.append(_draw(r, float(u[len(drafted)])))
        return tokens
    return tokens + [_draw(p[len(drafted)], float(u[len(drafted)]))]


@mistake("13.accept", "resample_p")
def accept_resampling_from_the_target(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] < p[i, x] / q[i, x]:
            out.append(int(x))
        else:
            out.append(_draw(p[i], float(u[-1])))  # "the target decides"
            return out
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "no_bonus")
def accept_without_the_bonus_token(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] < p[i, x] / q[i, x]:
            out.append(int(x))
        else:
            residual = (p[i] - q[i]).clamp(min=0)
            out.append(_draw(residual, float(u[-1])))
            break
    return out


@mistake("13.accept", "inverted")
def accept_with_the_ratio_upside_down(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] < min(1, q[i, x] / p[i, x]):
            out.append(int(x))
        else:
            out.append(_draw((p[i] - q[i]).clamp(min=0), float(u[-1])))
            return out
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "abs_residual")
def accept_with_an_absolute_difference(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i, x]:
            out.append(int(x))
        else:
            out.append(_draw((p[i] - q[i]).abs(), float(u[-1])))
            return out
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "no_stop")
def accept_without_stopping_at_the_rejection(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i, x]:
            out.append(int(x))
        else:
            out.append(_draw((p[i] - q[i]).clamp(min=0), float(u[-1])))  # and no break
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "bonus_row")
def accept_bonus_from_the_last_drafted_row(p, q, drafted, u):
    gamma = len(drafted)
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i, x]:
            out.append(int(x))
        else:
            out.append(_draw((p[i] - q[i]).clamp(min=0), float(u[gamma])))
            return out
    out.append(_draw(p[gamma - 1], float(u[gamma])))
    return out


@mistake("13.accept", "same_u")
def accept_reusing_the_acceptance_uniform(p, q, drafted, u):
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i, x]:
            out.append(int(x))
        else:
            out.append(_draw((p[i] - q[i]).clamp(min=0), float(u[i])))
            return out
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "shift")
def accept_against_the_next_row_of_p(p, q, drafted, u):
    # "row i + 1 is the prediction *after* x_i": an off-by-one in the target's rows
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i + 1, x]:
            out.append(int(x))
        else:
            out.append(_draw((p[i + 1] - q[i]).clamp(min=0), float(u[-1])))
            return out
    out.append(_draw(p[-1], float(u[-1])))
    return out


@mistake("13.accept", "shapes")
def accept_without_checking_the_shapes(p, q, drafted, u):
    # right, but trusts its caller: a missing row of p or entry of u is an IndexError, a surplus row unnoticed
    gamma = len(drafted)
    out = []
    for i, x in enumerate(drafted):
        if u[i] * q[i, x] < p[i, x]:
            out.append(int(x))
        else:
            out.append(_draw((p[i] - q[i]).clamp(min=0), float(u[gamma])))
            return out
    out.append(_draw(p[gamma], float(u[gamma])))
    return out


# ------------------------------------------------------------------ 13.expected_tokens


def _check_alpha(alpha):
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be in [0, 1]")


@mistake("13.expected_tokens", "exponent")
def expected_with_exponent_gamma(alpha, gamma):
    _check_alpha(alpha)
    if alpha == 1:
        return float(gamma)
    return (1 - alpha**gamma) / (1 - alpha)


@mistake("13.expected_tokens", "no_bonus")
def expected_accepted_only(alpha, gamma):
    _check_alpha(alpha)
    return sum(alpha**i for i in range(1, gamma + 1))


@mistake("13.expected_tokens", "untruncated")
def expected_untruncated_geometric(alpha, gamma):
    _check_alpha(alpha)
    return 1 / (1 - alpha) if alpha < 1 else float("inf")


@mistake("13.expected_tokens", "linear")
def expected_linear_in_gamma(alpha, gamma):
    _check_alpha(alpha)
    return 1 + gamma * alpha


@mistake("13.expected_tokens", "alpha_one")
def expected_dividing_by_zero_at_one(alpha, gamma):
    _check_alpha(alpha)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


@mistake("13.expected_tokens", "validate")
def expected_unvalidated(alpha, gamma):
    return float(gamma + 1) if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


@mistake("13.expected_tokens", "gamma")
def expected_checking_alpha_only(alpha, gamma):
    _check_alpha(alpha)  # gamma taken on trust: -1 gives 0 tokens per step, 2.5 a number
    if alpha == 1:
        return float(gamma + 1)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


# -------------------------------------------------------------------- 13.speedup_bound


def _check_c(c):
    if c < 0:
        raise ValueError("c must be >= 0")


@mistake("13.speedup_bound", "gamma_plus_one")
def bound_paying_gamma_plus_one_draft_steps(alpha, gamma, c):
    _check_c(c)
    return expected_tokens(alpha, gamma) / ((gamma + 1) * c + 1)


@mistake("13.speedup_bound", "no_c")
def bound_without_the_cost_ratio(alpha, gamma, c):
    _check_c(c)
    return expected_tokens(alpha, gamma) / (gamma + 1)


@mistake("13.speedup_bound", "c_inverted")
def bound_with_c_upside_down(alpha, gamma, c):
    _check_c(c)
    return expected_tokens(alpha, gamma) / (gamma / c + 1) if c > 0 else float("inf")


@mistake("13.speedup_bound", "multiply")
def bound_multiplying_by_the_cost(alpha, gamma, c):
    _check_c(c)
    return expected_tokens(alpha, gamma) * (gamma * c + 1)


@mistake("13.speedup_bound", "no_target")
def bound_forgetting_the_target_pass(alpha, gamma, c):
    _check_c(c)
    return expected_tokens(alpha, gamma) / (gamma * c) if c > 0 else float("inf")


@mistake("13.speedup_bound", "validate")
def bound_unvalidated(alpha, gamma, c):
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


@mistake("13.speedup_bound", "validate")
def bound_checking_c_below_zero_only(alpha, gamma, c):
    if c < 0:  # nan < 0 is False: nan goes through, and so does inf
        raise ValueError("c must be >= 0")
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


@mistake("13.speedup_bound", "alpha")
def bound_with_the_formula_written_out(alpha, gamma, c):
    if not c >= 0 or math.isinf(c):
        raise ValueError("c must be a finite number >= 0")
    tokens = gamma + 1 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)  # alpha never checked
    return tokens / (gamma * c + 1)


# ---------------------------------------------------------------------- 13.speculative


def _loop(target, draft, prompt_ids, max_new_tokens, gamma=4, temperature=0.0, top_k=None, top_p=1.0,
          stop_tokens=(), generator=None, stats=None, *, roll_target=True, roll_draft=True, feed_missed=True,
          one_pass=True, clamp=True, validate=True, accept=accept_draft, count_check=True, context="both",
          nucleus=True, inclusive=False):
    """A learner's speculative_generate; the keyword-only flags switch one mistake on."""
    if validate:
        check_speculative(gamma, temperature, target.cfg.vocab_size, draft.cfg.vocab_size)
        check_sampling(temperature, top_k, top_p)
    if count_check and max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("empty prompt")
    if context == "both":
        room = min(target.cfg.max_seq_len, draft.cfg.max_seq_len)
    elif context == "target":  # "the target is the model that matters"
        room = target.cfg.max_seq_len
    else:  # "the model raises anyway if it does not fit"
        room = math.inf
    if len(prompt) + max_new_tokens > room:
        raise ValueError("the prompt and the new tokens do not fit the context")
    if not nucleus:
        top_p = 1.0  # (what forgetting top_p in both to_probs calls amounts to)
    tc, dc = target.new_caches(), draft.new_caches()
    with torch.no_grad():
        if len(prompt) > 1:
            target(torch.tensor([prompt[:-1]]), tc)
            draft(torch.tensor([prompt[:-1]]), dc)
    seq = list(prompt)
    pending = [prompt[-1]]
    done = 0
    while done < max_new_tokens + inclusive:
        g = min(gamma, max_new_tokens - done - 1 + inclusive) if clamp else gamma
        xs, qs = [], []
        with torch.no_grad():
            for _ in range(g):
                logits = draft(torch.tensor([pending]), dc)[0, -1]
                q = to_probs(logits, temperature, top_k, top_p)
                x = int(q.argmax()) if temperature == 0 else _draw(q, float(torch.rand(1, generator=generator)))
                xs.append(x)
                qs.append(q)
                pending = [x]
            if one_pass:
                logits = target(torch.tensor([[seq[-1]] + xs]), tc)[0]
            else:
                logits = torch.cat([target(torch.tensor([[t]]), tc)[0] for t in [seq[-1]] + xs])
        p = to_probs(logits, temperature, top_k, top_p)
        u = torch.rand(g + 1, generator=generator) if temperature > 0 else torch.zeros(g + 1)
        new = (accept if g else accept_draft)(p, torch.stack(qs) if qs else p[:0], xs, u)
        if stats is not None:
            stats.append((g, len(new) - 1))
        seq += new
        if roll_target:
            rollback(tc, len(seq) - 1)
        if g == 0:
            pending = pending + new
        elif len(new) == g + 1 and new[:g] == xs:
            pending = [xs[-1], new[-1]] if feed_missed else [new[-1]]
        else:
            if roll_draft:
                rollback(dc, len(seq) - 1)
            pending = [new[-1]]
        for t in new:
            if t in set(stop_tokens):
                return
            yield t
            done += 1


def _as_checkpoint(name, **flags):
    generate = functools.partial(_loop, **flags)

    def wrong(target_config, target_weights, draft_config, draft_weights, prompt, options):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _through_adapter(generate, target_config, target_weights, draft_config, draft_weights, prompt,
                                    options)
        finally:
            torch.set_num_threads(before)

    wrong.__name__ = name
    return wrong


def _accept_no_bonus(p, q, drafted, u):
    out = accept_draft(p, q, drafted, u)
    return out[:-1] if out[:-1] == list(drafted) else out


def _accept_resample_p(p, q, drafted, u):
    return accept_resampling_from_the_target(p, q, drafted, u)


SPECULATIVE = [
    ("speculative_without_target_rollback", "no_rollback", dict(roll_target=False)),
    ("speculative_without_draft_rollback", "no_draft_rollback", dict(roll_draft=False)),
    ("speculative_forgets_the_drafts_last_token", "draft_gap", dict(feed_missed=False)),
    ("speculative_verifying_token_by_token", "per_token", dict(one_pass=False)),
    ("speculative_drafting_past_the_end", "overrun", dict(clamp=False)),
    ("speculative_without_validation", "validate", dict(validate=False)),
    ("speculative_forgetting_the_bonus_token", "no_bonus", dict(accept=_accept_no_bonus)),
    ("speculative_resampling_from_p", "resample_p", dict(accept=_accept_resample_p)),
    ("speculative_without_a_count_check", "negative", dict(count_check=False)),
    ("speculative_leaving_the_context_to_the_models", "context_late", dict(context="none")),
    ("speculative_checking_the_target_context_only", "context_draft", dict(context="target")),
    ("speculative_without_top_p", "top_p", dict(nucleus=False)),
    ("speculative_counting_max_new_tokens_inclusive", "too_many", dict(inclusive=True)),
]

for _name, _hint, _flags in SPECULATIVE:
    mistake("13.speculative", _hint)(_as_checkpoint(_name, **_flags))


# ------------------------------------------------------------------------ 13.mtp_loss (bonus)


def _mtp_shapes(head_logits, teacher_logits):
    """The checks a learner writes before the mistake (each entry below keeps them)."""
    if head_logits.dim() != 4 or teacher_logits.dim() != 3 or head_logits.shape[1:] != teacher_logits.shape:
        raise ValueError("shapes")
    K, _, T, _ = head_logits.shape
    if K < 1 or T <= K:
        raise ValueError("need K >= 1 and T > K")
    return K, T


@mistake("13.mtp_loss", "shift_late")
def mtp_loss_teacher_one_position_too_late(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    p_log = F.log_softmax(teacher_logits.detach(), dim=-1)
    per_head = []
    for k in range(1, K + 1):
        # "head k predicts token t + 1 + k, so the teacher at t + 1 + k"
        q_log = F.log_softmax(head_logits[k - 1, :, :T - k - 1], dim=-1)
        p = p_log[:, k + 1:]
        per_head.append((p.exp() * (p - q_log)).sum(-1).mean())
    losses = torch.stack(per_head)
    return losses.mean(), losses.tolist()


@mistake("13.mtp_loss", "shift_early")
def mtp_loss_teacher_one_position_too_early(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(K):  # 0-based k used as the shift
        student = head_logits[k][:, :T - k]
        teacher = teacher_logits.detach()[:, k:]
        per_head.append(F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                                 reduction="none").sum(-1).mean())
    loss = sum(per_head) / K
    return loss, [x.item() for x in per_head]


@mistake("13.mtp_loss", "reverse_kl")
def mtp_loss_kl_the_wrong_way_round(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(1, K + 1):
        log_q = head_logits[k - 1, :, :T - k].log_softmax(-1)
        log_p = teacher_logits[:, k:].detach().log_softmax(-1)
        per_head.append(F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1).mean())  # KL(q || p)
    per_head = torch.stack(per_head)
    return per_head.mean(), [float(v) for v in per_head]


@mistake("13.mtp_loss", "wrap")
def mtp_loss_with_torch_roll(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(1, K + 1):
        teacher = torch.roll(teacher_logits.detach(), shifts=-k, dims=1)  # (B, T, V), wraps round
        p = teacher.softmax(-1)
        per_head.append((p * (teacher.log_softmax(-1) - head_logits[k - 1].log_softmax(-1))).sum(-1).mean())
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "padded")
def mtp_loss_with_the_teacher_padded(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(1, K + 1):
        teacher = F.pad(teacher_logits.detach()[:, k:], (0, 0, 0, k))  # zeros for the last k positions
        log_p = teacher.log_softmax(-1)
        per_head.append((log_p.exp() * (log_p - head_logits[k - 1].log_softmax(-1))).sum(-1).mean())
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "grad_leak")
def mtp_loss_teacher_not_detached(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(1, K + 1):
        log_p = teacher_logits[:, k:].log_softmax(-1)  # no .detach(): the gradient reaches the target
        log_q = head_logits[k - 1, :, :T - k].log_softmax(-1)
        per_head.append((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    per_head = torch.stack(per_head)
    return per_head.mean(), [float(v) for v in per_head.detach()]


@mistake("13.mtp_loss", "sum_positions")
def mtp_loss_summed_over_positions(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    B = head_logits.shape[1]
    per_head = []
    for k in range(1, K + 1):
        log_p = teacher_logits[:, k:].detach().log_softmax(-1)
        log_q = head_logits[k - 1, :, :T - k].log_softmax(-1)
        per_head.append((log_p.exp() * (log_p - log_q)).sum() / B)  # "per sequence"
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "divide_T")
def mtp_loss_every_head_divided_by_T(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    B = head_logits.shape[1]
    per_head = []
    for k in range(1, K + 1):
        log_p = teacher_logits[:, k:].detach().log_softmax(-1)
        log_q = head_logits[k - 1, :, :T - k].log_softmax(-1)
        per_head.append(F.kl_div(log_q, log_p, log_target=True, reduction="sum") / (B * T))
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "ce_argmax")
def mtp_loss_cross_entropy_on_the_teacher_argmax(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    V = head_logits.shape[-1]
    per_head = []
    for k in range(1, K + 1):
        labels = teacher_logits[:, k:].argmax(-1)  # (B, T - k): the teacher's greedy tokens
        per_head.append(F.cross_entropy(head_logits[k - 1, :, :T - k].reshape(-1, V), labels.reshape(-1)))
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "raw_head")
def mtp_loss_kl_div_on_raw_head_logits(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(1, K + 1):
        p = teacher_logits[:, k:].detach().softmax(-1)
        # F.kl_div wants log-probabilities as its input: the logits were passed as they are
        per_head.append(F.kl_div(head_logits[k - 1, :, :T - k], p, reduction="none").sum(-1).mean())
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "raw_teacher")
def mtp_loss_teacher_logits_as_log_probs(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    per_head = []
    for k in range(1, K + 1):
        t = teacher_logits[:, k:].detach()
        log_q = head_logits[k - 1, :, :T - k].log_softmax(-1)
        per_head.append((t.softmax(-1) * (t - log_q)).sum(-1).mean())  # log p taken as the raw logits
    per_head = torch.stack(per_head)
    return per_head.mean(), per_head.tolist()


@mistake("13.mtp_loss", "heads_sum")
def mtp_loss_heads_summed(head_logits, teacher_logits):
    K, T = _mtp_shapes(head_logits, teacher_logits)
    total, per_head = 0.0, []
    for k in range(1, K + 1):
        log_p = teacher_logits[:, k:].detach().log_softmax(-1)
        log_q = head_logits[k - 1, :, :T - k].log_softmax(-1)
        loss_k = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        total = total + loss_k
        per_head.append(loss_k.item())
    return total, per_head


@mistake("13.mtp_loss", "validate")
def mtp_loss_without_checks(head_logits, teacher_logits):
    K, _, T, _ = head_logits.shape
    per_head = []
    for k in range(1, K + 1):
        log_p = teacher_logits[..., k:, :].detach().log_softmax(-1)
        log_q = head_logits[k - 1, ..., :T - k, :].log_softmax(-1)
        per_head.append((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    per_head = torch.stack(per_head) if per_head else torch.zeros(0)
    return per_head.mean(), per_head.tolist()
