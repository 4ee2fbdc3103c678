"""The output layer and cross-entropy in one pass, chunked over rows (no logits tensor).

``linear_cross_entropy(h, W, targets)`` equals
``F.cross_entropy(h @ W.T, targets, ignore_index=-100, reduction="sum")`` with its gradients,
but never holds the (N, vocab) logits, their log-softmax or its gradient at once: for each
chunk of rows it computes the logits, the loss, and at once the gradient of the loss with
respect to the logits (softmax minus one-hot), which it turns into the chunk's gradients for
``h`` and ``W``. The backward pass only scales those by the incoming gradient. The FLOPs are
those of the usual forward and backward (three matmuls with W); what is saved is memory
(one chunk of logits instead of three full tensors) and the memory traffic of the separate
log-softmax, its backward and the zero-filled gradient: 8-9% of a ~10M LLaMA training step on
a 2-core CPU (bench/RESULTS.md).

Under autocast the matmuls run in the autocast dtype; the logits, softmax and the weight
gradient are accumulated in float32 (float64 for a float64 model: tests compare in float64).
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100
# Logits per chunk of the softmax work: 4 MiB in float32, which stays in a core's cache (at
# 16 MiB every pass over them went to memory: the loss took 1.6x as long on a 2-core CPU).
CHUNK_ELEMENTS = 1 << 20
# Logits' gradients per weight-gradient matmul: its float32 sum over blocks, not over chunks
# (each sum converts and adds a whole vocab x d matrix).
BLOCK_ELEMENTS = 1 << 22


def _rows(vocab: int, elements: int) -> int:
    return max(16, elements // max(vocab, 1))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Logits, softmax, loss and weight gradient: float32, or float64 when computing in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


def _chunk_loss_and_grad(
    low: torch.Tensor, targets: torch.Tensor, work: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Summed loss of one chunk of logits ``low`` (the matmul's dtype); ``out`` (rows, V) gets
    d(sum loss)/d(logits) = softmax - one_hot, zero on ignored rows, computed in ``work``'s
    dtype (float32, or float64 for a float64 model) in ``work`` itself, which may be ``out``
    (then ``low`` is too: the matmul wrote into it).

    Five passes over the chunk: the row max, the shift (into ``work``, converting), exp, the row
    sum, and the division into ``out`` (converting as it writes; its divisor is inf on an
    ignored row, zeroing it). The one-hot's -1 is subtracted before the division, as the row's
    sum, so no pass is left after it. ``torch.logsumexp`` then ``exp(logits - lse)`` took two
    exp passes and an out-of-place subtraction that, on a CPU, was 70% of this loss's time
    (bench/RESULTS.md)."""
    acc = work.dtype
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    target = low.gather(1, safe[:, None]).squeeze(1).to(acc)
    top = low.amax(dim=-1, keepdim=True).to(acc)  # exact: the max of ``low``'s own values
    p = torch.sub(low, top, out=work).exp_()
    total = p.sum(dim=-1, keepdim=True)
    lse = (top + total.log()).squeeze(1)
    # (e_t - sum) / sum = softmax_t - 1 at each row's target
    p[torch.arange(len(targets), device=p.device), safe] -= total.squeeze(1) * valid
    torch.div(p, torch.where(valid[:, None], total, float("inf")), out=out)
    return torch.where(valid, lse - target, 0.0).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        w = weight.to(dtype)
        acc = _acc_dtype(dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        total = torch.zeros((), dtype=acc, device=h.device)
        vocab = weight.shape[0]
        block, step = _rows(vocab, BLOCK_ELEMENTS), _rows(vocab, CHUNK_ELEMENTS)
        # the logits' gradients of one block, in the matmul dtype; small chunks of it for the
        # softmax work (which then stays in cache), the whole block for the weight gradient
        grads = torch.empty(min(block, h.shape[0]), vocab, dtype=dtype, device=h.device)
        # float32 work space for a chunk (the gradients' own block when they are float32)
        work = None if dtype == acc else torch.empty(step, vocab, dtype=acc, device=h.device)
        for lo in range(0, h.shape[0], block):
            hb = h[lo : lo + block].to(dtype)
            gb = grads[: len(hb)]
            for c in range(0, len(hb), step):
                hc, out = hb[c : c + step], gb[c : c + step]
                if work is None:
                    low = space = torch.mm(hc, w.t(), out=out)
                else:
                    low, space = hc @ w.t(), work[: len(hc)]
                total += _chunk_loss_and_grad(low, targets[lo + c : lo + c + step], space, out)
            grad_h[lo : lo + len(hb)] = gb @ w
            if dtype == acc:
                grad_w.addmm_(gb.t(), hb)
            else:  # as autocast's backward: the matmul in the low precision, summed in float32
                grad_w.add_(gb.t() @ hb)  # converted inside the add: no float32 copy of it
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


@torch.no_grad()
def _loss_only(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    w = weight.to(dtype)
    acc = _acc_dtype(dtype)
    total = torch.zeros((), dtype=acc, device=h.device)
    step = _rows(weight.shape[0], CHUNK_ELEMENTS)
    for lo in range(0, h.shape[0], step):
        logits = (h[lo : lo + step].to(dtype) @ w.t()).to(acc)
        total += torch.nn.functional.cross_entropy(
            logits, targets[lo : lo + step], ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return total


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy of ``h @ weight.T`` against ``targets`` (-100 ignored), float32.

    h (N, d), weight (V, d), targets (N,). Gradients flow to ``h`` and ``weight``. Under
    ``torch.compile`` it runs eagerly once :func:`run_eagerly_under_compile` was called.
    """
    return (_eager_under_compile or _linear_cross_entropy)(h, weight, targets)


# torch.compiler.disable(linear_cross_entropy), made by run_eagerly_under_compile: decorating
# at import would import torch._dynamo, about 0.9 s of every command's start-up.
_eager_under_compile: Any = None


def run_eagerly_under_compile() -> None:
    """Make torch.compile leave the chunked loss (a Python loop over chunks with in-place
    updates) to eager mode, a graph break; the trainer calls it before compiling. Without it
    dynamo traces the loop, which computes the same loss, only compiles longer."""
    global _eager_under_compile
    if _eager_under_compile is None:
        _eager_under_compile = torch.compiler.disable(_linear_cross_entropy)


def _linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    dtype = _compute_dtype(h)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        with torch.autocast(h.device.type, enabled=False):
            return _LinearCrossEntropy.apply(h, weight, targets, dtype)
    with torch.autocast(h.device.type, enabled=False):
        return _loss_only(h, weight, targets, dtype)
