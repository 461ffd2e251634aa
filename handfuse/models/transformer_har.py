"""Pose-based hand action recognition with a small causal temporal transformer encoder.

The second action recogniser, after current skeleton-based practice: a
transformer encoder over the frames of a pose sequence (Vaswani et al. 2017,
"Attention Is All You Need"; as a temporal encoder over hand poses, e.g. Wen et
al. 2023, "Hierarchical Temporal Transformer for 3D Hand Pose Estimation and
Action Recognition from Egocentric RGB Videos" (HTT), CVPR).  Each frame's
21 x 3 pose features (as the LSTM's) are one token:

    joints (B, T, 21, 3) -> flatten (B, T, 63) -> Linear to d_model, + positions
      -> layers x pre-norm block: x + MHSA(LN(x)) (causal), x + MLP(LN(x))
      -> LN -> h_t (B, T, d_model) -> Linear -> per-step logits y_t (B, T, 45)

Causal.  Step t attends to steps <= t only, so ``y_t`` is the action after frame t
(what action feedback reads before frame t+1), exactly as the LSTM's.  Padding
comes after the valid steps, so causality alone keeps it out of every valid
output; padded inputs are also zeroed (NaN padding stays harmless), padded keys
masked out, and padded outputs zeroed and left out of the readout and the loss.

Positions: ``"sinusoidal"`` (fixed, any length) or ``"learned"`` (one vector per
step up to ``max_len``).

Readout and loss: the LSTM's own (:func:`handfuse.models.har.sequence_readout`,
``sequence_loss``): the last valid step's logits, or temporal attention over
``[y_t; h_t]`` (:class:`handfuse.models.har.TemporalAttention`), and cross-entropy
plus an optional per-step term.

Stepping: the state is a key-value cache, each layer's keys and values of the
steps so far (and the last step's h_t).  Each :meth:`TransformerHAR.step` runs the
new frame's token alone through the blocks, attending to the cached keys, so a
sequence costs O(T) token passes, as the whole-sequence forward, not the O(T^2)
of re-encoding the prefix at every step.  In eval mode it equals the
whole-sequence forward (a test checks it); in training mode each token draws its
dropout once, as in the whole-sequence forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import check, is_int
from ..skeleton import NUM_ACTIONS
from .har import IN_FEATURES, TemporalAttention, sequence_input, sequence_loss, sequence_outputs, sequence_readout

POSITIONS = ("sinusoidal", "learned")
# per layer the keys and values of the steps so far, each (B, heads, t, d_model / heads), and the last h_t (B, d_model)
State = tuple[tuple[tuple[torch.Tensor, torch.Tensor], ...], torch.Tensor]


@dataclass(frozen=True)
class TransformerHARConfig:
    """The temporal transformer.  Defaults: the cpu preset's (FLOPs per sequence ~ the LSTM's)."""

    d_model: int = 64  # token width
    heads: int = 4  # attention heads (d_model must divide by it)
    layers: int = 2  # encoder blocks
    ff: int = 128  # hidden width of each block's MLP
    dropout: float = 0.1  # on attention weights, residual branches and before the classifier
    positions: str = "sinusoidal"  # one of POSITIONS
    max_len: int = 256  # the longest sequence with learned positions
    attention: bool = False  # temporal attention readout instead of the last valid step
    step_loss: float = 0.0  # weight of the auxiliary per-step cross-entropy

    def __post_init__(self):
        check(is_int(self.d_model) and self.d_model >= 1, "transformer_har.d_model", self.d_model, "an integer >= 1")
        check(is_int(self.heads) and self.heads >= 1 and self.d_model % self.heads == 0, "transformer_har.heads",
              self.heads, f"an integer >= 1 that divides d_model = {self.d_model}")
        check(is_int(self.layers) and self.layers >= 1, "transformer_har.layers", self.layers, "an integer >= 1")
        check(is_int(self.ff) and self.ff >= 1, "transformer_har.ff", self.ff, "an integer >= 1")
        check(isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
              and 0.0 <= self.dropout < 1.0, "transformer_har.dropout", self.dropout, "a probability in [0, 1)")
        check(self.positions in POSITIONS, "transformer_har.positions", self.positions, f"one of {POSITIONS}")
        check(is_int(self.max_len) and self.max_len >= 1, "transformer_har.max_len", self.max_len, "an integer >= 1")
        check(isinstance(self.attention, bool), "transformer_har.attention", self.attention, "True or False")
        check(isinstance(self.step_loss, (int, float)) and not isinstance(self.step_loss, bool)
              and self.step_loss >= 0.0, "transformer_har.step_loss", self.step_loss, "a weight >= 0")


def sinusoidal_positions(steps: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(steps, dim) fixed position codes: sin and cos of the step at geometric frequencies."""
    t = torch.arange(steps, device=device, dtype=torch.float64)[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float64) * (-math.log(10000.0) / dim))
    codes = torch.zeros(steps, dim, device=device, dtype=torch.float64)
    codes[:, 0::2] = torch.sin(t * freq)
    codes[:, 1::2] = torch.cos(t * freq[: dim // 2])
    return codes.to(dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where step t sees the valid steps <= t."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, h, T, D/h) each

    def _mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        # q: (B, h, T_q, D/h); k, v: (B, h, T_k, D/h); allowed: broadcastable to (B, h, T_q, T_k), None: all
        B, _, T, dh = q.shape
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, h, T_q, T_k)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = self.drop(torch.softmax(scores, dim=-1))
        return self.proj((weights @ v).transpose(1, 2).reshape(B, T, self.heads * dh))  # (B, T_q, D)

    def forward(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); keys: (B, T) bool, the steps that may be attended to
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T) query t, key s <= t
        allowed = causal[None, None] & keys[:, None, None, :]  # (B, 1, T, T); a step always sees step 0
        return self._mix(*self._qkv(x), allowed)

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One new token x (B, 1, D) against the cached keys and values (B, h, t, D/h) of the steps
        before it -> its output (B, 1, D) and the cache with its own key and value appended."""
        q, k, v = self._qkv(x)
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # (B, h, t + 1, D/h)
        return self._mix(q, k, v, None), (k, v)  # every cached step precedes it: nothing to mask


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), keys))  # (B, T, D)
        return x + self.drop(self.mlp(self.norm2(x)))

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` for one new token (B, 1, D), with the attention's key-value cache."""
        a, cache = self.attn.step(self.norm1(x), cache)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), cache


class TransformerHAR(nn.Module):
    """Causal temporal transformer action recogniser on (B, T, 21, 3) pose sequences; see the module docstring."""

    def __init__(self, cfg: TransformerHARConfig = TransformerHARConfig(), num_classes: int = NUM_ACTIONS):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(IN_FEATURES, cfg.d_model)
        self.position = nn.Parameter(torch.randn(cfg.max_len, cfg.d_model) * 0.02) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, num_classes)
        self.attention = TemporalAttention(num_classes, cfg.d_model) if cfg.attention else None

    def _positions(self, steps: int, like: torch.Tensor) -> torch.Tensor:
        if self.position is None:
            return sinusoidal_positions(steps, self.cfg.d_model, like.device, like.dtype)  # (T, D)
        if steps > self.cfg.max_len:
            raise ValueError(f"{steps} steps is longer than transformer_har.max_len = {self.cfg.max_len}")
        return self.position[:steps]

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pose features (B, T, 63), zero on padding, and the mask (B, T) -> h (B, T, D), causal."""
        h = self.drop(self.embed(x) + self._positions(x.shape[1], x))  # (B, T, D)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)

    def readout(self, step_logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequence logits (B, C) and attention weights (B, T) or None from (B, T, C), (B, T, D), (B, T)."""
        return sequence_readout(self.attention, step_logits, hidden, mask)

    def forward(self, joints: torch.Tensor, mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """``joints`` (B, T, 21, 3), ``mask`` (B, T) bool True on valid steps (all if None) ->
        ``step_logits`` (B, T, C) and ``hidden`` (B, T, D) (zero on padding), ``logits`` (B, C),
        ``attention`` (B, T) or None, and ``loss`` given ``labels`` (B,)."""
        x, mask = sequence_input(joints, mask)  # (B, T, 63), (B, T)
        return sequence_outputs(self, self.encode(x, mask), mask, labels)  # hidden (B, T, D)

    def loss(self, out: dict, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the sequence logits, plus ``step_loss`` times the per-step one."""
        return sequence_loss(out, labels, mask, self.cfg.step_loss)

    def init_state(self, batch: int) -> State:
        """An empty key-value cache (B, heads, 0, d_model / heads) per layer and a zero h (B, D)."""
        p = self.classifier.weight
        empty = torch.zeros(batch, self.cfg.heads, 0, self.cfg.d_model // self.cfg.heads, device=p.device, dtype=p.dtype)
        return tuple((empty, empty) for _ in self.blocks), torch.zeros(batch, self.cfg.d_model, device=p.device, dtype=p.dtype)

    def step(self, joints_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One frame (B, 21, 3) -> its step logits (B, C) and the new state: the frame's token alone
        runs through the blocks, attending to the cached keys and values of the steps before it."""
        caches, _ = state
        t = caches[0][0].shape[2]  # steps so far
        x = joints_t.reshape(len(joints_t), 1, IN_FEATURES)  # (B, 1, 63)
        h = self.drop(self.embed(x) + self._positions(t + 1, x)[t])  # (B, 1, D)
        new = []
        for block, cache in zip(self.blocks, caches):
            h, cache = block.step(h, cache)
            new.append(cache)
        h_t = self.norm(h)[:, 0]  # (B, D)
        return self.classifier(self.drop(h_t)), (tuple(new), h_t)

    def hidden(self, state: State) -> torch.Tensor:
        """The last step's h_t (B, D)."""
        return state[1]
