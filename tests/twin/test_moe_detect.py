"""The structural MoE detector and token counter (modelopt_fork/twin/moe.py) on synthetic modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelopt_fork.twin.moe import count_routed_tokens, find_moe_blocks

H, N, K = 8, 4, 2


class ScoredExperts(nn.Module):
    """Llama-4 style: one forward on inputs pre-scaled by the router's sparse scores, no indices."""

    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(N, H, 2 * H))
        self.down_proj = nn.Parameter(torch.randn(N, H, H))

    def forward(self, x):
        return x


class GroupedGemm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(N, H, H))


class GroupedExperts(nn.Module):
    """Aria style: 3-D weights one level down, called with the router's logits."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = GroupedGemm(), GroupedGemm()

    def forward(self, x, router_logits):
        return x


class Block(nn.Module):
    def __init__(self, experts, sparse_scores: bool):
        super().__init__()
        self.router = nn.Linear(H, N, bias=False)
        self.experts = experts
        self.top_k = K
        self.sparse = sparse_scores

    def forward(self, x):
        logits = self.router(x)
        if self.sparse:
            return self.experts(x)
        return self.experts(x, logits)


class SparseRouter(nn.Linear):
    """Returns (scores zero off the top-k, logits), as Llama4Router does."""

    def forward(self, x):
        logits = super().forward(x)
        top = logits.topk(K, dim=-1)
        return torch.zeros_like(logits).scatter(1, top.indices, top.values.sigmoid()), logits


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(ScoredExperts(), True), Block(GroupedExperts(), False)])
        self.layers[0].router = SparseRouter(H, N, bias=False)
        self.self_attn = nn.Module()
        self.self_attn.experts = ScoredExperts()  # mixture of attention heads: no MoE block

    def forward(self, x):
        for layer in self.layers:
            layer(x)


def test_blocks_without_index_tensors_are_counted_from_their_router():
    torch.manual_seed(0)
    m = Model()
    blocks = find_moe_blocks(m)
    assert [(b.name, b.num_experts, b.fused) for b in blocks] == [("layers.0", N, True), ("layers.1", N, True)]
    tokens = 10
    with torch.no_grad(), count_routed_tokens(blocks) as counts:
        m(torch.randn(tokens, H))
    for name, c in counts.items():
        assert int(c.sum()) == tokens * K, (name, c)
        assert (c <= tokens).all()


def test_no_router_and_no_indices_is_an_error_naming_the_experts():
    m = Model()
    m.layers[1].router = nn.Identity()  # no Linear router left beside the experts
    m.layers[1].forward = lambda x: m.layers[1].experts(x, x)
    with pytest.raises(RuntimeError, match=r"layers\.1\.experts: fused experts called without an integer"):
        with torch.no_grad(), count_routed_tokens(find_moe_blocks(m)):
            m(torch.randn(3, H))
