"""Why each float comparison of the suite may differ, and by how much: the tolerances and their analysis.

Two float32 computations of the same quantity that run the same operations in another order (a padded batch
against one row at a time, activations kept or recomputed, a merged weight against the separate update) round
differently; float32's unit roundoff is u = 6e-8. None of these bounds depends on the CPU: they hold for any
order of the additions, which is what differs between CPUs (vector widths, blocking, threads).
"""

from __future__ import annotations

import torch

FLOAT32_UNIT_ROUNDOFF = 2.0**-24  # u: a float32 rounding moves a value by at most u times it

# A mean cross-entropy recomputed row by row without padding, against the steps' padded batches: masked
# positions add exact zeros, but the sums run in another order, which moves each log-probability by a few
# ulps (about 1e-7 relative) through the few layers of the models tested here; a mean over tens to
# hundreds of tokens keeps that size. 1e-5 relative leaves a hundredfold margin and is a thousand times
# finer than any bug's effect seen (a wrong prompt, truncation or weighting moves the loss by percent).
LOSS_RTOL = 1e-5


def assert_same_gradient(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """A gradient computed twice from the same terms summed in another order.

    An element's rounding error scales with the magnitudes of its terms, not with the element, which
    cancellation can make arbitrarily small (an elementwise rtol alone failed on an AMD EPYC). The terms are
    bounded by the tensor's largest element, and sums of up to ~10^4 terms stay near 1e-5 of it (sqrt(n)
    growth of u); 1e-4 of it leaves ten times that, and any wrong weighting of tokens or micro-batches moves
    the gradient by percent.
    """
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item(), msg=name)


def same_sgd_trajectory_atol(learning_rate: float, largest_gradients: list[float], largest_parameter: float) -> float:
    """Parameters after SGD steps whose gradients are the same sums in another order (ranks, accumulation).

    Each step's gradient element agrees to ``assert_same_gradient``'s bound, 1e-4 |g| + 1e-4 max|g| <= 2e-4 max|g|
    of that step, and SGD moves the parameter by lr times it: 2e-4 lr sum_k max|g_k| after the steps. Each update
    p - lr g is then rounded to float32, half an ulp of p (u |p|) per step and run, which the first term cannot
    cover where the update is far below p (LoRA's A, while B is still near zero): 2 u max|p| per step. Weight
    decay adds wd * p, whose difference is wd times the parameters' own, a hundredth of it here; the parameters
    differing also changes the next gradients by the loss's curvature times the difference, which at the small
    learning rates of these tests stays under the first-order terms, so twice their sum is the bound. Rounding
    cannot reach it on any CPU; a wrong weighting of tokens or micro-batches moves every gradient by percent.
    """
    steps = len(largest_gradients)
    return 2 * (2e-4 * learning_rate * sum(largest_gradients) + steps * 2 * FLOAT32_UNIT_ROUNDOFF * largest_parameter)


# torch.testing.assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5), for outputs of order 1 computed by
# the same operations up to reassociation (x A^T B^T against a fused F.linear chain, PEFT's layer against
# ours) in models a few layers deep and at most 64 wide: reassociation moves a sum of n terms by at most
# n u |terms| ~ 64 * 6e-8 ~ 4e-6 per layer, under atol. Merging folds (alpha/r) B A into W0: one more
# rounding of every weight (u relative), so merged against unmerged outputs get MERGED_RTOL and MERGED_ATOL.
MERGED_RTOL, MERGED_ATOL = 1e-4, 1e-5


# The exported plain checkpoint against the adapter model it came from: the same float32 weights (LoRA merged
# the same way, then saved and loaded bit for bit) and the same operations, except that the LM head's matmul has
# the prompt's extra columns, which may change how a CPU blocks the dot products of the others (each a sum of
# d_model products, moved by at most d_model * u of the sum of their magnitudes). Logits over the original
# vocabulary, in units of the largest logit: 1e-5 covers d_model up to 1024 with a tenfold margin; a missing
# LoRA merge or prompt moves them by percent. Beam scores are sums of such log-probabilities over a few steps.
EXPORT_LOGITS_RTOL = 1e-5
