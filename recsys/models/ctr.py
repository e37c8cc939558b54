"""CTR models over any ``KeyedJaggedTensor -> KeyedTensor`` sparse module.

    .venv/bin/python -m pytest tests/unit/models -q

:class:`DLRM` (dot interaction) and :class:`DCN` (DCN-v2, low-rank cross network) reuse
TorchRec's model pieces (``DenseArch``, ``InteractionArch``, ``OverArch``, ``LowRankCrossNet``)
but take the sparse module as a constructor argument: torchrec's own ``DLRM`` insists on a real
``EmbeddingBagCollection``, while ours must accept a
:class:`~recsys.embeddings.CompressedEmbeddingBagCollection` (or a plain EBC) unchanged.
:class:`CTRTask` adds the loss (``BCEWithLogits``) and is the module that training wraps in
``DistributedModelParallel``.

Shapes: ``B`` batch, ``N`` dense features, ``F`` sparse features, ``D`` embedding dim.

Example::

    #        i = 0     i = 1    <-- batch index
    # "C1"   [4]       [7]
    # "M1"   [2, 5]    []
    collection = build_embedding_collection(spec)
    model = build_ctr_model(DLRMConfig(dense_layers=[64, 16], over_layers=[64, 1]), spec, collection)
    logits = model(batch.dense, batch.sparse)   # (B,)
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch, choose
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.data.batch import Batch
from recsys.features.spec import DatasetSpec

__all__ = ["DLRM", "DCN", "CTRTask", "DLRMConfig", "DCNConfig", "ModelConfig", "build_ctr_model"]


def _stack_features(kt: KeyedTensor, feature_names: Sequence[str]) -> torch.Tensor:
    """KeyedTensor of F keys at dim D -> ``(B, F, D)`` in ``feature_names`` order."""
    per_key = kt.to_dict()
    return torch.stack([per_key[name] for name in feature_names], dim=1)  # (B, F, D)


class DLRM(nn.Module):
    """DLRM: dense MLP, pairwise dot products of all embeddings, over MLP.

    Args:
        sparse (nn.Module): ``KeyedJaggedTensor -> KeyedTensor`` with one key per name in
            ``feature_names``, each ``(B, D)``.
        feature_names (Sequence[str]): the sparse features fed to the interaction, in order.
        embedding_dim (int): D, shared by every feature (the dot interaction needs one dim).
        num_dense (int): N >= 1 dense inputs.
        dense_layers (Sequence[int]): DenseArch sizes; the last must equal ``embedding_dim``.
        over_layers (Sequence[int]): OverArch sizes, at least two, the last 1.
        device (torch.device | None): where the dense layers live (``meta`` works).
    """

    def __init__(
        self,
        sparse: nn.Module,
        feature_names: Sequence[str],
        embedding_dim: int,
        num_dense: int,
        dense_layers: Sequence[int],
        over_layers: Sequence[int],
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if dense_layers[-1] != embedding_dim:
            raise ValueError(
                f"dense_layers: the last size is {dense_layers[-1]} but the embedding dim is {embedding_dim}; "
                f"DLRM's dot interaction needs them equal (e.g. dense_layers: [..., {embedding_dim}])"
            )
        _check_over_layers(over_layers)
        self.feature_names = list(feature_names)
        num_sparse = len(self.feature_names)
        self.sparse = sparse
        self.dense_arch = DenseArch(num_dense, list(dense_layers), device=_device(device))
        self.inter_arch = InteractionArch(num_sparse_features=num_sparse)
        over_in = embedding_dim + choose(num_sparse, 2) + num_sparse  # D + F choose 2 + F
        self.over_arch = OverArch(over_in, list(over_layers), device=_device(device))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Args:
            dense (torch.Tensor): ``(B, N)`` float32.
            sparse (KeyedJaggedTensor): ids of every feature in ``feature_names``.

        Returns:
            torch.Tensor: ``(B,)`` logits.
        """
        embedded_dense = self.dense_arch(dense)  # (B, D)
        embedded_sparse = _stack_features(self.sparse(sparse), self.feature_names)  # (B, F, D)
        interactions = self.inter_arch(embedded_dense, embedded_sparse)  # (B, D + F + F choose 2)
        return self.over_arch(interactions).squeeze(-1)  # (B,)


class DCN(nn.Module):
    """DCN-v2: a low-rank cross network over ``[dense MLP output, all embeddings]``, then an MLP.

    Like torchrec's ``DLRM_DCN`` (whose ``InteractionDCNArch`` flattens ``(B, F + 1, D)``), but the
    cross network reads the concatenation directly, so features may have different dims.

    Args:
        sparse (nn.Module): ``KeyedJaggedTensor -> KeyedTensor``, keys ``feature_names``.
        feature_names (Sequence[str]): the sparse features, in order.
        embedding_dims (Sequence[int]): ``D_f`` per feature.
        num_dense (int): N >= 1 dense inputs.
        dense_layers (Sequence[int]): DenseArch sizes (any last size).
        over_layers (Sequence[int]): OverArch sizes, at least two, the last 1.
        cross_layers (int): cross layers (>= 1).
        low_rank (int): rank of each cross layer's ``W = U V``.
        device (torch.device | None): where the dense layers live.
    """

    def __init__(
        self,
        sparse: nn.Module,
        feature_names: Sequence[str],
        embedding_dims: Sequence[int],
        num_dense: int,
        dense_layers: Sequence[int],
        over_layers: Sequence[int],
        cross_layers: int = 3,
        low_rank: int = 64,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        _check_over_layers(over_layers)
        self.feature_names = list(feature_names)
        self.sparse = sparse
        self.dense_arch = DenseArch(num_dense, list(dense_layers), device=_device(device))
        in_features = dense_layers[-1] + sum(embedding_dims)  # D_dense + sum(D_f)
        with torch.device(_device(device) or "cpu"):  # LowRankCrossNet has no device argument
            self.cross_net = LowRankCrossNet(in_features=in_features, num_layers=cross_layers, low_rank=low_rank)
        self.over_arch = OverArch(in_features, list(over_layers), device=_device(device))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Args:
            dense (torch.Tensor): ``(B, N)`` float32.
            sparse (KeyedJaggedTensor): ids of every feature in ``feature_names``.

        Returns:
            torch.Tensor: ``(B,)`` logits.
        """
        kt = self.sparse(sparse)
        per_key = kt.to_dict()
        x0 = torch.cat([self.dense_arch(dense), *(per_key[n] for n in self.feature_names)], dim=1)  # (B, D_in)
        return self.over_arch(self.cross_net(x0)).squeeze(-1)  # (B,)


class CTRTask(nn.Module):
    """Model + binary cross-entropy on logits; the module DMP wraps for training.

    Args:
        model (nn.Module): ``(dense, sparse) -> (B,)`` logits (:class:`DLRM`, :class:`DCN`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loss, logits)``: the mean BCE (scalar) and the detached ``(B,)`` logits."""
        logits = self.model(batch.dense, batch.sparse)  # (B,)
        loss = self.loss_fn(logits, batch.labels)
        return loss, logits.detach()


# -- config and builder -----------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DLRMConfig(_Config):
    """``model: {arch: dlrm, dense_layers: [64, 16], over_layers: [256, 128, 1]}``.

    The last dense layer must equal the features' embedding dim.
    """

    arch: Literal["dlrm"] = "dlrm"
    dense_layers: tuple[Annotated[int, Field(ge=1)], ...] = (64, 16)
    over_layers: tuple[Annotated[int, Field(ge=1)], ...] = (256, 128, 1)


class DCNConfig(_Config):
    """``model: {arch: dcn, dense_layers: [64, 16], cross_layers: 3, low_rank: 64, over_layers: [256, 1]}``."""

    arch: Literal["dcn"]
    dense_layers: tuple[Annotated[int, Field(ge=1)], ...] = (64, 16)
    over_layers: tuple[Annotated[int, Field(ge=1)], ...] = (256, 128, 1)
    cross_layers: Annotated[int, Field(ge=1, le=16)] = 3
    low_rank: Annotated[int, Field(ge=1)] = 64


ModelConfig = Annotated[Union[DLRMConfig, DCNConfig], Field(discriminator="arch")]


def build_ctr_model(
    config: DLRMConfig | DCNConfig,
    spec: DatasetSpec,
    sparse: nn.Module,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build :class:`DLRM` or :class:`DCN` for a data set's features around a sparse module.

    Args:
        config: the ``model`` section of a training config.
        spec: the data set's (resolved) feature spec: dense count, sparse names and dims.
        sparse: ``KeyedJaggedTensor -> KeyedTensor`` over every sparse feature of ``spec``
            (``build_embedding_collection(spec)`` or a plain ``EmbeddingBagCollection``).
        device: where the dense layers are built (``"meta"`` for sharded training).

    Raises:
        ValueError: no dense features; DLRM with features of different dims, or a last dense
            layer that differs from the embedding dim; the last over layer is not 1.
    """
    names = [f.name for f in spec.sparse]
    dims = [f.embedding_dim for f in spec.sparse]
    num_dense = len(spec.dense)
    if num_dense == 0:
        raise ValueError(f"spec {spec.name!r} has no dense features; DLRM / DCN need at least one")
    if config.arch == "dlrm":
        if len(set(dims)) != 1:
            shown = {n: d for n, d in zip(names, dims)}
            raise ValueError(
                f"model.arch 'dlrm' needs one embedding_dim for all sparse features; got {shown}. "
                "Use arch 'dcn' (any dims) or give every feature the same embedding_dim"
            )
        return DLRM(sparse, names, dims[0], num_dense, config.dense_layers, config.over_layers, device=device)
    return DCN(
        sparse,
        names,
        dims,
        num_dense,
        config.dense_layers,
        config.over_layers,
        cross_layers=config.cross_layers,
        low_rank=config.low_rank,
        device=device,
    )


def _check_over_layers(over_layers: Sequence[int]) -> None:
    if len(over_layers) < 2 or over_layers[-1] != 1:
        raise ValueError(
            f"over_layers: got {list(over_layers)}; give at least two sizes ending in 1 (one logit), e.g. [128, 1]"
        )


def _device(device: torch.device | str | None) -> torch.device | None:
    return torch.device(device) if device is not None else None
