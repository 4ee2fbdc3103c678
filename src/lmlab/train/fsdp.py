"""FSDP2 for the training loop (``train.parallel = "fsdp"`` under torchrun).

Sharding is PyTorch's own (``torch.distributed.fsdp.fully_shard``): each transformer block is
one FSDP unit, then the root takes what is left (embeddings, final norm, head). Parameters,
gradients and optimizer state live as DTensor shards, one 1/world slice per rank; a block's
full weights exist only while it runs.

Checkpoints stay ordinary lmlab checkpoints: :func:`gather_for_checkpoint` collects the full
weights and optimizer state on rank 0 (``torch.distributed.checkpoint.state_dict`` with
``full_state_dict`` and ``cpu_offload``) into a plain model and a plain AdamW, which
:func:`lmlab.train.checkpoint.save_checkpoint` writes as for one process. Resuming loads the
weights into the model before it is sharded and the optimizer state with
:func:`load_optimizer_state`, so a checkpoint moves freely between 1 process, DDP and FSDP.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed._composable import checkpoint

from lmlab.config import Config
from lmlab.errors import CheckpointError
from lmlab.model import build_model
from lmlab.train.optim import build_optimizer

# torch.distributed.fsdp and torch.distributed.checkpoint.state_dict are imported when an FSDP
# run first needs them: together about 1 s that every `lmlab` command paid at start-up.
_FSDP = "torch.distributed.fsdp"


def _fsdp_api() -> Any:
    import torch.distributed.fsdp as api  # noqa: PLC0415 (0.5 s of start-up; FSDP runs only)

    return api


def _state_dict_api() -> Any:
    from torch.distributed.checkpoint import state_dict  # noqa: PLC0415 (0.5 s of start-up; FSDP only)

    return state_dict


def mixed_precision(dtype: torch.dtype) -> Any:
    """bf16/fp16 compute weights with fp32 gradient reductions; fp32 runs get the default policy."""

    policy = _fsdp_api().MixedPrecisionPolicy
    if dtype is torch.float32:
        return policy()
    # reduce in fp32: averaging bf16 gradients over ranks would lose the low bits of each
    return policy(param_dtype=dtype, reduce_dtype=torch.float32)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated layers that become one FSDP unit (and one checkpointed region) each."""
    blocks = getattr(model, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each block's activations in backward (composable API: parameter names stay)."""

    for block in blocks_of(model):
        checkpoint(block)


def shard(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``fully_shard`` every block, then the root; the model is changed in place and returned."""

    policy = mixed_precision(dtype)
    fully_shard = _fsdp_api().fully_shard
    for block in blocks_of(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True for a model ``fully_shard`` wrapped (which imported torch.distributed.fsdp)."""
    api = sys.modules.get(_FSDP)
    return api is not None and isinstance(model, api.FSDPModule)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the clipped grad norm) as a plain tensor; plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (its shards only)."""
    seen: set[int] = set()
    params = grads = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        loc = _local(p)
        params += loc.numel() * loc.element_size()
        if p.grad is not None:
            g = _local(p.grad)
            grads += g.numel() * g.element_size()
    opt = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                loc = _local(v)
                opt += loc.numel() * loc.element_size()
    return {"params": params, "grads": grads, "optimizer": opt, "total": params + grads + opt}


# --- optimizer state: lmlab's (index-keyed, as torch.optim saves it) <-> FQN-keyed -----------


def _param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied head shares the embedding's name)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    return names


def _to_fqn_keys(
    model: nn.Module, optimizer: torch.optim.Optimizer, sd: dict[str, Any]
) -> dict[str, Any]:
    """An index-keyed optimizer state dict for ``optimizer``'s params -> keyed by parameter names."""
    names = _param_names(model)
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_order = [i for g in sd["param_groups"] for i in g["params"]]
    if len(saved_order) != len(order):
        raise ValueError(f"{len(saved_order)} parameters saved, the model trains {len(order)}")
    index_to_name = dict(zip(saved_order, order))
    state = {index_to_name[int(i)]: v for i, v in sd["state"].items()}
    groups = []
    for g, live in zip(sd["param_groups"], optimizer.param_groups):
        groups.append({**g, "params": [names[id(p)] for p in live["params"]]})
    return {"state": state, "param_groups": groups}


def _to_index_keys(
    model: nn.Module, optimizer: torch.optim.Optimizer, sd: dict[str, Any]
) -> dict[str, Any]:
    """The inverse of :func:`_to_fqn_keys` for a plain (unsharded) model and optimizer."""
    names = _param_names(model)
    index = 0
    state: dict[int, Any] = {}
    groups = []
    for live, saved in zip(optimizer.param_groups, sd["param_groups"]):
        ids = []
        for p in live["params"]:
            name = names[id(p)]
            if name in sd["state"]:
                state[index] = sd["state"][name]
            ids.append(index)
            index += 1
        groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": groups}


def gather_for_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, is_main: bool
) -> tuple[nn.Module | None, torch.optim.Optimizer | None]:
    """Collective: full weights and optimizer state as a plain CPU model + AdamW on rank 0.

    Every rank must call it; ranks other than 0 get ``(None, None)``.
    """

    api = _state_dict_api()
    opts = api.StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = api.get_model_state_dict(model, options=opts)
    optim_sd = api.get_optimizer_state_dict(model, optimizer, options=opts)
    if not is_main:
        return None, None
    plain = build_model(cfg.model)
    plain.load_state_dict(weights)
    plain_opt = build_optimizer(plain, cfg.optim, cfg.train.lr, torch.device("cpu"))
    plain_opt.load_state_dict(_to_index_keys(plain, plain_opt, optim_sd))
    return plain, plain_opt


def gather_model(
    model: nn.Module, cfg: Config, device: torch.device, is_main: bool
) -> nn.Module | None:
    """Collective: the full model on rank 0's ``device`` (for evaluation and samples), else None."""

    api = _state_dict_api()
    weights = api.get_model_state_dict(
        model, options=api.StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not is_main:
        return None
    plain = build_model(cfg.model)
    plain.load_state_dict(weights)
    return plain.to(device)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt: Path) -> None:
    """Collective: load a checkpoint's ``optimizer.pt`` (any process count wrote it) into shards."""

    f = ckpt / "optimizer.pt"
    try:
        blob = torch.load(f, map_location="cpu", weights_only=True)
        sd = _to_fqn_keys(model, optimizer, blob["optimizer"])
        api = _state_dict_api()
        api.set_optimizer_state_dict(
            model, optimizer, sd, options=api.StateDictOptions(full_state_dict=True)
        )
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{f}: optimizer state does not fit this model ({type(e).__name__}: {e})"
        ) from None
