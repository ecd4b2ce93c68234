"""PerSAM-F's fit of its two mask-mixing weights: the plain loop's result, without autograd.

The plain loop (PerSAM-F's, as the releases run it): w = [1 - a - b, a, b] mixes SAM's three
multimask logit maps L_k at image size, loss = dice + sigmoid focal (alpha 0.25, gamma 2) against
the support mask, AdamW (lr 1e-3, eps 1e-4, weight decay 1e-2) under a cosine schedule. Autograd
builds and walks ~15 full-image tensors per iteration to get two numbers.

Here each pixel is one variable y = sign * logit (sign +1 on the mask, -1 off it). The focal term
is then the same function everywhere, alpha_t * (1 - q)^2 * -log q with q = sigmoid(y), and
y = A + a B + b C is linear in the two scalars (A = sign L0, B = sign (L1 - L0),
C = sign (L2 - L0)), so the gradient is [B; C] times dloss/dy, written by hand into buffers
allocated once; AdamW runs on Python floats.

Saturated pixels: where y >= SATURATED for every (a, b) within RADIUS of the current point,
q is 1 to float32 precision: the pixel adds 1 (mask) or 0 (background) to dice's sums and less than
e^-SATURATED to everything else, below the resolution of the plain loop's float32 sums. They are
set aside, and the set is rebuilt whenever (a, b) leaves that box.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import sigmoid_focal_loss

FOCAL_ALPHA = 0.25
LR, EPS, WEIGHT_DECAY, BETAS = 1e-3, 1e-4, 1e-2, (0.9, 0.999)
INIT = 1 / 3
SATURATED = 20.0
RADIUS = 0.05
# Below UNDERFLOW, sigmoid nears float32's smallest normal: log(q) is then taken of max(q, TINY) and
# replaced by y, which it equals to float32 precision there.
UNDERFLOW, TINY = -60.0, 1e-30


class _SignedPixels:
    """The per-pixel data of the loss, mask pixels first, with the saturated ones set aside."""

    def __init__(self, outputs: torch.Tensor, truth: torch.Tensor, saturated: float):
        self.saturated = saturated
        flat = outputs.detach().reshape(3, -1).float()
        inside = truth.reshape(-1).to(flat.device, torch.bool)
        signed = torch.cat([flat[:, inside], -flat[:, ~inside]], dim=1)
        self.abc = torch.stack([signed[0], signed[1] - signed[0], signed[2] - signed[0]])
        self.reach = (self.abc[1].abs() + self.abc[2].abs()) * RADIUS
        self.n_mask, self.n = int(inside.sum()), flat.shape[1]
        self.centre = None

    def activate(self, a: float, b: float) -> None:
        """Keep the pixels that may leave saturation while (a, b) stays within RADIUS of here."""
        lowest = torch.add(self.abc[0], self.abc[1], alpha=a).add_(self.abc[2], alpha=b).sub_(self.reach)
        keep = lowest < self.saturated
        self.guard_underflow = bool(lowest.min() < UNDERFLOW)
        self.active = self.abc[:, keep].contiguous()
        self.active_mask = int(keep[: self.n_mask].sum())
        self.saturated_mask = self.n_mask - self.active_mask
        self.centre = (a, b)
        m = self.active.shape[1]
        self.y, self.q, self.r, self.log_q, self.work, self.qr = (torch.empty(m, device=self.abc.device) for _ in range(6))

    def ensure_active(self, a: float, b: float) -> None:
        if self.centre is None or max(abs(a - self.centre[0]), abs(b - self.centre[1])) > RADIUS:
            self.activate(a, b)

    def loss_and_grad(self, a: float, b: float) -> tuple[float, float, float]:
        """(loss, dloss/da, dloss/db) at (a, b)."""
        self.ensure_active(a, b)
        abc, y, q, r, log_q, work, qr = self.active, self.y, self.q, self.r, self.log_q, self.work, self.qr
        k = self.active_mask
        torch.add(abc[0], abc[1], alpha=a, out=y).add_(abc[2], alpha=b)
        torch.sigmoid(y, out=q)
        if self.guard_underflow:
            torch.clamp_min(q, TINY, out=log_q).log_()
            torch.minimum(log_q, y, out=log_q)
        else:
            torch.log(q, out=log_q)
        torch.neg(q, out=r).add_(1.0)
        torch.mul(q, r, out=qr)
        # dice, in the mask/background split: p = q on the mask, 1 - q off it
        q_mask = float(q[:k].sum()) + self.saturated_mask
        q_background = float(q[k:].sum())
        n_background_active = len(q) - k
        intersection = q_mask
        total = q_mask + (n_background_active - q_background) + self.n_mask + 1
        dice = 1 - (2 * intersection + 1) / total
        c_mask = -(2 * total - 2 * intersection - 1) / total**2
        c_background = -(2 * intersection + 1) / total**2
        # focal: alpha_t r^2 (-log q); its derivative -alpha_t r^2 (r - 2 q log q)
        torch.mul(r, r, out=work)
        focal_sum = -(FOCAL_ALPHA * float(torch.dot(work[:k], log_q[:k]))
                      + (1 - FOCAL_ALPHA) * float(torch.dot(work[k:], log_q[k:])))
        torch.mul(q, log_q, out=log_q)
        torch.add(r, log_q, alpha=-2, out=log_q).mul_(work)
        log_q[:k].mul_(-FOCAL_ALPHA / self.n).add_(qr[:k], alpha=c_mask)
        log_q[k:].mul_(-(1 - FOCAL_ALPHA) / self.n).add_(qr[k:], alpha=c_background)
        grad_a, grad_b = torch.mv(abc[1:], log_q).tolist()
        return dice + focal_sum / self.n, grad_a, grad_b


def fit_mixing_weights(outputs: torch.Tensor, truth: torch.Tensor, iters: int,
                       saturated: float = SATURATED) -> tuple[torch.Tensor, list]:
    """PerSAM-F's fit: (weights [1 - a - b, a, b] (3,), loss per iteration) from SAM's three logit
    maps ``outputs`` (3, H, W) and the support mask ``truth`` (H, W), as :func:`autograd_fit` gives.

    ``saturated`` = inf keeps every pixel (the benchmark measures what setting them aside saves).
    """
    pixels = _SignedPixels(outputs, truth, saturated)
    params, m, v = [INIT, INIT], [0.0, 0.0], [0.0, 0.0]
    (beta1, beta2), history = BETAS, []
    for step in range(1, iters + 1):
        loss, *grads = pixels.loss_and_grad(*params)
        history.append(loss)
        lr = LR * (1 + math.cos(math.pi * (step - 1) / iters)) / 2
        for i, g in enumerate(grads):
            params[i] *= 1 - lr * WEIGHT_DECAY
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            denom = math.sqrt(v[i]) / math.sqrt(1 - beta2**step) + EPS
            params[i] -= lr / (1 - beta1**step) * m[i] / denom
    a, b = params
    return torch.tensor([1 - a - b, a, b], device=outputs.device), history


def autograd_fit(outputs: torch.Tensor, truth: torch.Tensor, iters: int) -> tuple[torch.Tensor, list]:
    """The plain loop, as the releases run it (autograd, torch's AdamW and cosine schedule): the
    reference the tests hold :func:`fit_mixing_weights` to, and the benchmark's baseline."""
    truth = truth.to(outputs.device, torch.float32)
    free = torch.nn.Parameter(torch.full((2,), INIT, device=outputs.device))
    optimizer = torch.optim.AdamW([free], lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, betas=BETAS)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    history = []
    with torch.enable_grad():
        for _ in range(iters):
            weights = torch.cat([1 - free.sum(0, keepdim=True), free])
            logits = torch.einsum("k,khw->hw", weights, outputs)
            prob = logits.sigmoid()
            dice = 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)
            loss = dice + sigmoid_focal_loss(logits, truth, alpha=FOCAL_ALPHA, gamma=2, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(float(loss.detach()))
    return torch.cat([1 - free.sum(0, keepdim=True), free]).detach(), history
