"""The starter's optimizer: Muon on the hidden matrices, AdamW on everything else."""

import torch
from transformers import LlamaForCausalLM

from editloop.starter.optim import StarterOptimizer
from editloop.starter.trainer import SIZES

TINY = SIZES["tiny"]


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(TINY.llama_config(eos_id=1, pad_id=2))


def _names(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> set[str]:
    if optimizer is None:
        return set()
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in owned}


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = _model()
    optimizer = StarterOptimizer(model, lr=3e-3, muon_lr=0.02)
    muon, adamw = _names(model, optimizer.muon), _names(model, optimizer.adamw)
    assert muon and not muon & adamw and muon | adamw == {n for n, _ in model.named_parameters()}
    assert all(model.get_parameter(n).ndim == 2 for n in muon)
    assert {n.split(".")[-2] for n in muon} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    # The embedding is tied to the output head, and norms are vectors: both stay with AdamW.
    assert "model.embed_tokens.weight" in adamw and any("norm" in n for n in adamw)


def test_without_a_muon_rate_everything_trains_with_adamw() -> None:
    model = _model()
    optimizer = StarterOptimizer(model, lr=3e-3, muon_lr=0.0)
    assert optimizer.muon is None
    assert _names(model, optimizer.adamw) == {n for n, _ in model.named_parameters()}


def test_one_scale_sets_both_learning_rates() -> None:
    optimizer = StarterOptimizer(_model(), lr=3e-3, muon_lr=0.02)
    optimizer.set_scale(0.5)
    assert {g["lr"] for g in optimizer.adamw.param_groups} == {1.5e-3}
    assert {g["lr"] for g in optimizer.muon.param_groups} == {0.01}


def test_muon_updates_are_orthogonalized_and_reset_forgets_momentum() -> None:
    model = _model()
    weight = model.get_parameter("model.layers.0.self_attn.q_proj.weight")
    optimizer = StarterOptimizer(model, lr=3e-3, muon_lr=0.02)
    before = weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    optimizer.step()
    singular = torch.linalg.svdvals(weight.detach() - before)
    # Newton-Schulz maps every singular value of the (Gaussian) gradient into about 0.5..1.2;
    # AdamW's sign-like first step on this square matrix spreads them over 300x.
    assert float(singular.max() / singular.min()) < 5.0
    assert optimizer.muon.state
    optimizer.zero_grad()
    assert weight.grad is None
    optimizer.reset()
    assert not optimizer.muon.state and not optimizer.adamw.state


def test_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    model = _model()
    optimizer = StarterOptimizer(model, lr=3e-3, muon_lr=0.02)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    restored = StarterOptimizer(model, lr=3e-3, muon_lr=0.02)
    restored.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for old, new in ((optimizer.muon, restored.muon), (optimizer.adamw, restored.adamw)):
        for key, value in old.state_dict()["state"].items():
            for name, tensor in value.items():
                assert torch.equal(
                    torch.as_tensor(tensor), torch.as_tensor(new.state_dict()["state"][key][name])
                )
