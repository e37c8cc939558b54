"""Combiners as data, and the one combine plan the collection compiles from them.

Every method declares how its physical lookups become its logical vector as ONE small frozen
dataclass (its :meth:`~recsys.embeddings.methods.base.FeatureMethod.combiner`); the collection
never calls method code to combine. Each declaration gives the feature's SUM-pooled ``(B, D)``
vector (mean pooling is applied once, by the plan, with the logical bag lengths):

===================================  ========================================================  =====================
declaration                          output of one feature                                      used by
===================================  ========================================================  =====================
``Concat(keys)``                     the keys' pooled columns side by side                      full, hashed, unified,
                                                                                                qr concat, multi_hash
``Sum(keys)``                        elementwise sum of equally wide pooled keys                qr add, mixed_dim (no
                                                                                                projections)
``Product(keys)``                    elementwise product of equally wide pooled keys (exact     qr mult, single-valued
                                     only for bags of one value: a product does not commute
                                     with pooling)
``Projected(keys, weights)``         ``sum_i pooled[key_i] @ W_i``, ``W_i`` a parameter of the  mixed_dim
                                     method named in ``weights`` (None: identity, key D wide)
``Weighted(keys, weight_key, ...)``  probe i scaled by column i of the ``weight_key`` row,      multi_hash with
                                     then summed (``reduce="sum"``) or side by side             importance weights
``Contract(keys, shapes)``           the tensor-train chain product of the keys' core slices    tt, single-valued
                                     (exact only for bags of one value, as a product)
``Network(feature)``                 the method's dense network on each value's id (no          dhe
                                     table), then summed per bag
``PerValue(inner)``                  ``inner`` applied to each VALUE's vectors (the             qr mult, weighted
                                     ``EmbeddingCollection`` outputs), then summed per bag      multi_hash, tt, on bags
===================================  ========================================================  =====================

:meth:`CombinePlan.compile` turns the declarations into typed steps against the layout the inner
``EmbeddingBagCollection`` ACTUALLY returns (``kt.keys()``, ``kt.length_per_key()``): the unsharded
one (tables in build order) or a sharded one (keys grouped by sharding type and rank). The pooled
``(B, sum w)`` output is cut ONCE (one ``split``, whose backward is one ``cat``; many overlapping
slices would each zero-fill a full-size gradient) at the boundaries the steps need, then:

- ``ConcatRun``: consecutive ``Concat`` features whose keys lie side by side are one piece, no copy;
  when every feature is such a run in pooled order, the pooled output IS the result;
- ``ReduceRun``: consecutive ``Sum`` / ``Product`` features of the same ``(k, d)``, combined by one
  op on either one ``(B, n, k, d)`` piece (feature-major layout) or k ``(B, n * d)`` pieces (probe-
  major, as a sharded layout tends to put every feature's probe j side by side);
- ``ProjectStep``, ``WeightedStep``, ``ContractStep``, ``PerValueStep``: one feature each (a matmul,
  a weighting, a chain of batched matmuls, a per-value product then a segment sum).

Keys that a step needs side by side but that are not become a ``cat`` of their pieces. The output
keys are the logical features in the collection's order when the layout is the build layout, and
otherwise in the order the steps produce them, without a permutation (what TorchRec's own sharded
``EmbeddingBagCollection`` does; consumers read a ``KeyedTensor`` by key). The plan holds only
Python integers and the mean-pooling repeat counts (a non-persistent buffer); nothing is built
from host data in ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

# -- declarations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concat:
    """The pooled columns of ``keys`` side by side (widths add up to the feature's dim)."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class Sum:
    """Elementwise sum of the pooled outputs of ``keys`` (all the feature's dim wide)."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class Product:
    """Elementwise product of ``keys`` (all the feature's dim wide), left to right.

    On pooled outputs only for single-valued features; wrap in :class:`PerValue` for bags.
    """

    keys: tuple[str, ...]


@dataclass(frozen=True)
class Projected:
    """``sum_i pooled[keys[i]] @ W_i`` with ``W_i = method.get_parameter(weights[i])``, ``(d_i, D)``.

    ``weights[i] is None`` means key i is already D wide (identity, no matmul).
    """

    keys: tuple[str, ...]
    weights: tuple[str | None, ...]


@dataclass(frozen=True)
class Weighted:
    """Probe i (``keys[i]``, each ``d`` wide) times column i of the ``weight_key`` output.

    ``reduce="sum"``: the weighted probes summed (D = d); ``"concat"``: side by side (D = k d).
    On pooled outputs only for single-valued features (the pooled weight row IS the id's row);
    wrap in :class:`PerValue` for bags.
    """

    keys: tuple[str, ...]
    weight_key: str
    reduce: Literal["sum", "concat"]


@dataclass(frozen=True)
class Contract:
    """Tensor-train contraction of ``keys`` (TT-Rec): key i holds one core slice per row,
    ``shapes[i] = (r_in, m_i, r_out)`` (``r_in = 1`` for the first, ``r_out = 1`` for the last);
    the output is the ``(m_1 ... m_k)``-long chain product, ``m_1`` the slowest index.

    On pooled outputs only for single-valued features (a product of lookups); wrap in
    :class:`PerValue` for bags.
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Network:
    """No table: the method's own dense network maps each VALUE's id to a ``D`` vector
    (``method.encode_values(ids) -> (N, D)``, DHE), then the vectors are summed per bag. The plan
    hands the step the feature's logical ids (``per_value[feature]``, a ``JaggedTensor``)."""

    feature: str


@dataclass(frozen=True)
class PerValue:
    """``inner`` evaluated on every value's vectors (``EmbeddingCollection`` outputs, ``(N, d)``),
    then summed per bag with the logical lengths."""

    inner: Union[Concat, Sum, Product, Weighted, Contract]


Combiner = Union[Concat, Sum, Product, Projected, Weighted, Contract, PerValue, Network]


def combiner_keys(c: Combiner) -> tuple[str, ...]:
    """Every physical feature a combiner reads."""
    if isinstance(c, PerValue):
        return combiner_keys(c.inner)
    if isinstance(c, Weighted):
        return (*c.keys, c.weight_key)
    if isinstance(c, Network):
        return ()
    return tuple(c.keys)


def evaluate(c: Combiner, tensors: dict[str, torch.Tensor], method: nn.Module | None = None) -> torch.Tensor:
    """The declaration's meaning, written out on a dict of ``(rows, width)`` tensors per key.

    The plan's vectorised steps compute the same thing; this is used for per-value inputs and by
    tests as the reference.
    """
    if isinstance(c, Concat):
        parts = [tensors[k] for k in c.keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if isinstance(c, (Sum, Product)):
        out = tensors[c.keys[0]]
        for k in c.keys[1:]:
            out = out * tensors[k] if isinstance(c, Product) else out + tensors[k]
        return out
    if isinstance(c, Projected):
        out = None
        for k, w in zip(c.keys, c.weights):
            part = tensors[k] if w is None else tensors[k] @ method.get_parameter(w)
            out = part if out is None else out + part
        return out
    if isinstance(c, Weighted):
        w = tensors[c.weight_key]
        probes = [tensors[k] * w[:, i : i + 1] for i, k in enumerate(c.keys)]
        if c.reduce == "concat":
            return torch.cat(probes, dim=1)
        out = probes[0]
        for p in probes[1:]:
            out = out + p
        return out
    if isinstance(c, Contract):
        return contract([tensors[k] for k in c.keys], c.shapes)
    raise TypeError(f"evaluate: {type(c).__name__} is not a pooled combiner (PerValue is applied by the plan)")


def contract(cores: list[torch.Tensor], shapes: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """Chain product of per-row core slices: ``cores[i]`` is ``(n, r_in * m_i * r_out)``; returns
    ``(n, m_1 ... m_k)``. One batched matmul per core after the first."""
    n = cores[0].shape[0]
    out = cores[0].view(n, shapes[0][1], shapes[0][2])  # (n, M, r): M = m_1 so far
    for core, (r_in, m, r_out) in zip(cores[1:], shapes[1:]):
        out = torch.bmm(out, core.view(n, r_in, m * r_out))  # (n, M, m * r_out)
        out = out.view(n, -1, r_out)
    return out.reshape(n, -1)


def pool_sum(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum per-value rows ``(N, D)`` into their bags ``(B, D)``; empty bags give zeros."""
    batch = lengths.numel()
    segment = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths, output_size=values.shape[0])
    out = torch.zeros(batch, values.shape[1], dtype=values.dtype, device=values.device)
    return out.index_add(0, segment, values)


# -- the compiled plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureEntry:
    """One logical feature as the plan sees it."""

    name: str
    dim: int
    combiner: Combiner
    mean: bool


@dataclass(frozen=True)
class Layout:
    """The pooled output of the inner bag collection: its keys and their widths, in order."""

    keys: tuple[str, ...]
    widths: tuple[int, ...]

    @staticmethod
    def of(kt: KeyedTensor | None) -> Layout:
        if kt is None:
            return Layout((), ())
        return Layout(tuple(kt.keys()), tuple(kt.length_per_key()))


@dataclass(frozen=True)
class Read:
    """Columns of several keys side by side: one piece of the split (no copy) or a cat of pieces."""

    pieces: tuple[int, ...]

    def __call__(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        if len(self.pieces) == 1:
            return pieces[self.pieces[0]]
        return torch.cat([pieces[i] for i in self.pieces], dim=1)

    @property
    def copies(self) -> bool:
        return len(self.pieces) > 1


@dataclass(frozen=True)
class ConcatRun:
    features: tuple[int, ...]
    read: Read

    def __call__(self, pieces, per_value, lengths, methods) -> torch.Tensor:
        return self.read(pieces)


@dataclass(frozen=True)
class ReduceRun:
    """n features, each the sum / product of k pooled keys of width d."""

    features: tuple[int, ...]
    op: Literal["sum", "prod"]
    num_keys: int
    dim: int
    reads: tuple[Read, ...]  # one: (B, n * k * d) feature-major; k: (B, n * d) per probe

    def __call__(self, pieces, per_value, lengths, methods) -> torch.Tensor:
        if len(self.reads) == 1:
            x = self.reads[0](pieces)
            n = len(self.features)
            # unbind: one backward node (a stack), not k zero-filled select gradients.
            probes = x.view(x.shape[0], n, self.num_keys, self.dim).unbind(2)  # k x (B, n, d)
        else:
            probes = [r(pieces) for r in self.reads]  # k x (B, n * d)
        out = probes[0]
        for p in probes[1:]:
            out = out * p if self.op == "prod" else out + p
        return out.reshape(out.shape[0], -1)


@dataclass(frozen=True)
class ProjectStep:
    """One mixed-dim feature: the projected keys as one block times the stacked weights (one
    matmul: ``[x_1 .. x_m] @ [W_1; ..; W_m] = sum_i x_i @ W_i``), plus the identity keys."""

    features: tuple[int, ...]
    feature: str
    projected: Read | None
    weights: tuple[str, ...]
    identity: tuple[Read, ...]

    def __call__(self, pieces, per_value, lengths, methods) -> torch.Tensor:
        out = None
        if self.projected is not None:
            m = methods[self.feature]
            ws = [m.get_parameter(w) for w in self.weights]
            out = self.projected(pieces) @ (ws[0] if len(ws) == 1 else torch.cat(ws))
        for r in self.identity:
            x = r(pieces)
            out = x if out is None else out + x
        return out


@dataclass(frozen=True)
class WeightedStep:
    features: tuple[int, ...]
    probes: Read
    weights: Read
    num_keys: int
    dim: int
    reduce: str

    def __call__(self, pieces, per_value, lengths, methods) -> torch.Tensor:
        x = self.probes(pieces)
        batch = x.shape[0]
        w = self.weights(pieces)[:, : self.num_keys].unsqueeze(2)  # (B, k, 1)
        x = x.view(batch, self.num_keys, self.dim) * w  # (B, k, d)
        return x.sum(1) if self.reduce == "sum" else x.reshape(batch, -1)


@dataclass(frozen=True)
class PerValueStep:
    features: tuple[int, ...]
    feature: str
    combiner: PerValue

    def __call__(self, pieces, per_value: dict[str, JaggedTensor], lengths, methods) -> torch.Tensor:
        inner = self.combiner.inner
        values = {k: per_value[k].values() for k in combiner_keys(inner)}  # each (N, d)
        return pool_sum(evaluate(inner, values, methods[self.feature]), lengths[self.features[0]])


@dataclass(frozen=True)
class ContractStep:
    """One TT feature: its cores' pooled rows (bags of one) read side by side, then contracted."""

    features: tuple[int, ...]
    read: Read
    combiner: Contract

    def __call__(self, pieces, per_value, lengths, methods) -> torch.Tensor:
        x = self.read(pieces)
        widths = [a * m * b for a, m, b in self.combiner.shapes]
        return contract(list(torch.split(x, widths, dim=1)), self.combiner.shapes)


@dataclass(frozen=True)
class NetworkStep:
    """One DHE feature: its network on every value's id, then summed per bag."""

    features: tuple[int, ...]
    feature: str

    def __call__(self, pieces, per_value: dict[str, JaggedTensor], lengths, methods) -> torch.Tensor:
        ids = per_value[self.feature].values()  # the feature's logical ids, (N,)
        return pool_sum(methods[self.feature].encode_values(ids), lengths[self.features[0]])


Step = Union[ConcatRun, ReduceRun, ProjectStep, WeightedStep, ContractStep, NetworkStep, PerValueStep]


class CombinePlan(nn.Module):
    """The compiled combine of a collection for ONE pooled layout (see the module docstring).

    Call :meth:`compile`; then ``plan(pooled, per_value, lengths, methods) -> KeyedTensor``.
    """

    def __init__(self, layout: Layout, steps: list[Step], split_sizes: list[int], order: list[int],
                 features: list[FeatureEntry], device: torch.device | None, ordered: bool):
        super().__init__()
        self.layout = layout
        self.ordered = ordered  # compiled for the build layout (output in the collection's order)
        self.steps = steps
        self.split_sizes = split_sizes
        self.order = order  # logical feature index of each output key
        self.keys = [features[i].name for i in order]
        self.dims = [features[i].dim for i in order]
        self.mean = [features[i].mean for i in order]
        self.uniform_dim = self.dims[0] if len(set(self.dims)) == 1 else None
        self.register_buffer("_repeats", torch.tensor(self.dims, dtype=torch.int64, device=device), persistent=False)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.calls = 0  # forwards run through this plan (the tests pin that the compiled path ran)

    @staticmethod
    def compile(features: list[FeatureEntry], layout: Layout, ordered: bool, device: torch.device | None = None) -> CombinePlan:
        """Steps for ``features`` on ``layout``.

        Args:
            features: the logical features, in the collection's order.
            layout: keys and widths of the pooled output the steps will read.
            ordered: emit the features in the collection's order (the build layout); else in the
                order of their first pooled key (no permutation of a sharded output).
            device: where the mean-pooling repeat counts live.
        """
        span = {}
        start = 0
        for key, width in zip(layout.keys, layout.widths):
            span[key] = (start, start + width)
            start += width
        total = start
        pooled_keys = [[k for k in combiner_keys(f.combiner) if k in span] for f in features]
        for f, keys in zip(features, pooled_keys):
            needed = () if isinstance(f.combiner, PerValue) else combiner_keys(f.combiner)
            missing = [k for k in needed if k not in span]
            if missing:
                raise ValueError(f"feature {f.name}: combiner reads {missing}, which the pooled output {list(layout.keys)} lacks")
        if ordered:
            order = list(range(len(features)))
        else:
            # Features read from the pooled output first, by the position of their first key.
            order = sorted(range(len(features)), key=lambda i: (not pooled_keys[i], span[pooled_keys[i][0]][0] if pooled_keys[i] else i))

        # 1. Group consecutive features into runs; each run names the key sequences it reads.
        groups: list[tuple[str, list[int]]] = []
        for i in order:
            c = features[i].combiner
            sig = _signature(c, span)
            if groups and sig is not None and groups[-1][0] == sig:
                groups[-1][1].append(i)
            else:
                groups.append((sig if sig is not None else f"one:{i}", [i]))

        # 2. Every key sequence a step reads -> contiguous sub-runs -> cut points.
        requests: list[list[str]] = []
        plans: list[tuple] = []
        for sig, members in groups:
            c0 = features[members[0]].combiner
            if isinstance(c0, Concat):
                plans.append(("concat", members, [len(requests)]))
                requests.append([k for i in members for k in features[i].combiner.keys])
            elif isinstance(c0, (Sum, Product)):
                # Read the run feature-major (one (B, n, k, d) block) or probe-major (k blocks of
                # (B, n * d)), whichever lies in fewer pieces of this layout.
                k = len(c0.keys)
                feature_major = [key for i in members for key in features[i].combiner.keys]
                probe_major = [[features[i].combiner.keys[j] for i in members] for j in range(k)]
                if len(_subruns(feature_major, span)) <= sum(len(_subruns(r, span)) for r in probe_major):
                    plans.append(("reduce", members, [len(requests)]))
                    requests.append(feature_major)
                else:
                    plans.append(("reduce", members, list(range(len(requests), len(requests) + k))))
                    requests.extend(probe_major)
            elif isinstance(c0, Projected):
                proj = [key for key, w in zip(c0.keys, c0.weights) if w is not None]
                ident = [key for key, w in zip(c0.keys, c0.weights) if w is None]
                reqs = []
                if proj:
                    reqs.append(len(requests))
                    requests.append(proj)
                for key in ident:
                    reqs.append(len(requests))
                    requests.append([key])
                plans.append(("project", members, reqs))
            elif isinstance(c0, Weighted):
                plans.append(("weighted", members, [len(requests), len(requests) + 1]))
                requests.extend([list(c0.keys), [c0.weight_key]])
            elif isinstance(c0, Contract):
                plans.append(("contract", members, [len(requests)]))
                requests.append(list(c0.keys))
            elif isinstance(c0, PerValue):
                plans.append(("per_value", members, []))
            elif isinstance(c0, Network):
                plans.append(("network", members, []))
            else:
                raise TypeError(f"feature {features[members[0]].name}: unknown combiner {type(c0).__name__}")
        cuts = {0, total}
        subruns = [_subruns(r, span) for r in requests]
        for runs in subruns:
            for a, b in runs:
                cuts.update((a, b))
        bounds = sorted(cuts)
        piece_at = {a: i for i, a in enumerate(bounds[:-1])}
        split_sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        reads = []
        for runs in subruns:
            if any(bounds[piece_at[a] + 1] != b for a, b in runs):
                raise AssertionError("a cut fell inside a read")  # each key is read once: cannot happen
            reads.append(Read(tuple(piece_at[a] for a, _ in runs)))

        # 3. Typed steps.
        steps: list[Step] = []
        for kind, members, req in plans:
            idx = tuple(members)
            c0 = features[members[0]].combiner
            if kind == "concat":
                steps.append(ConcatRun(idx, reads[req[0]]))
            elif kind == "reduce":
                width = span[c0.keys[0]][1] - span[c0.keys[0]][0]
                op = "prod" if isinstance(c0, Product) else "sum"
                steps.append(ReduceRun(idx, op, len(c0.keys), width, tuple(reads[r] for r in req)))
            elif kind == "project":
                has_proj = any(w is not None for w in c0.weights)
                steps.append(
                    ProjectStep(
                        idx,
                        features[members[0]].name,
                        reads[req[0]] if has_proj else None,
                        tuple(w for w in c0.weights if w is not None),
                        tuple(reads[r] for r in (req[1:] if has_proj else req)),
                    )
                )
            elif kind == "weighted":
                width = span[c0.keys[0]][1] - span[c0.keys[0]][0]
                steps.append(WeightedStep(idx, reads[req[0]], reads[req[1]], len(c0.keys), width, c0.reduce))
            elif kind == "contract":
                steps.append(ContractStep(idx, reads[req[0]], c0))
            elif kind == "network":
                steps.append(NetworkStep(idx, features[members[0]].name))
            else:
                steps.append(PerValueStep(idx, features[members[0]].name, c0))
        out_order = [i for s in steps for i in s.features]
        if len(split_sizes) <= 1:
            split_sizes = []
        return CombinePlan(layout, steps, split_sizes, out_order, features, device, ordered)

    def forward(
        self,
        pooled: torch.Tensor,
        per_value: dict[str, JaggedTensor],
        lengths: list[torch.Tensor],
        methods: nn.ModuleDict,
    ) -> KeyedTensor:
        """Args:
            pooled (torch.Tensor): ``(B, sum w)`` laid out as :attr:`layout`.
            per_value (dict[str, JaggedTensor]): the ``EmbeddingCollection`` outputs.
            lengths (list[torch.Tensor]): each logical feature's bag lengths ``(B,)``, collection order.
            methods (nn.ModuleDict): feature -> method (owner of the projection weights).

        Returns:
            KeyedTensor: keys :attr:`keys`, values ``(B, sum(D_f))``.
        """
        self.calls += 1
        pieces = list(torch.split(pooled, self.split_sizes, dim=1)) if self.split_sizes else [pooled]
        blocks = [step(pieces, per_value, lengths, methods) for step in self.steps]
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)  # (B, sum D_f)
        if any(self.mean):
            # Mean pooling in one place: divide by the LOGICAL bag length (empty bags stay zero).
            ones = None
            scale = []
            for i, mean in zip(self.order, self.mean):
                if mean:
                    scale.append(lengths[i].clamp(min=1).to(out.dtype))
                else:
                    ones = torch.ones_like(lengths[0], dtype=out.dtype) if ones is None else ones
                    scale.append(ones)
            scale = torch.stack(scale, dim=1)  # (B, F)
            batch = out.shape[0]
            if self.uniform_dim is not None:
                out = (out.view(batch, len(self.keys), self.uniform_dim) / scale.unsqueeze(2)).view(batch, -1)
            else:
                out = out / torch.repeat_interleave(scale, self._repeats, dim=1, output_size=out.shape[1])
        return KeyedTensor(keys=self.keys, length_per_key=self.dims, values=out)

    def path(self) -> str:
        """Short form for benchmark tables, e.g. ``compiled (sharded layout): ConcatRun x1, ReduceRun x1``."""
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[type(s).__name__] = counts.get(type(s).__name__, 0) + 1
        copies = sum(line.endswith("gathered read(s)") for line in self.summary())
        kind = "build layout" if self.ordered else "sharded layout"
        text = ", ".join(f"{k} x{v}" for k, v in counts.items())
        return f"compiled ({kind}): {text}" + (f"; {copies} step(s) gather" if copies else "")

    def summary(self) -> list[str]:
        """One line per step: what it combines and whether it copies, for benchmarks and logs."""
        lines = []
        for s in self.steps:
            names = [self.keys[self.order.index(i)] for i in s.features]
            head = f"{type(s).__name__}({len(s.features)} feature{'s' if len(s.features) > 1 else ''}: {names[0]}{'..' + names[-1] if len(names) > 1 else ''})"
            reads = [getattr(s, "read", None)] + list(getattr(s, "reads", ()))
            reads += [getattr(s, "projected", None), getattr(s, "probes", None)] + list(getattr(s, "identity", ()))
            copies = sum(r.copies for r in reads if r is not None)
            lines.append(head + (f", {copies} gathered read(s)" if copies else ""))
        return lines


def _signature(c: Combiner, span: dict[str, tuple[int, int]]) -> str | None:
    """Features with the same signature, one after the other, form one vectorised run."""
    if isinstance(c, Concat):
        return "concat"
    if isinstance(c, (Sum, Product)):
        a, b = span[c.keys[0]]
        if any(span[k][1] - span[k][0] != b - a for k in c.keys):
            raise ValueError(f"{type(c).__name__}{c.keys}: keys of different widths")
        return f"{type(c).__name__}:{len(c.keys)}:{b - a}"
    return None


def _subruns(keys: list[str], span: dict[str, tuple[int, int]]) -> list[tuple[int, int]]:
    """Maximal column ranges of ``keys`` (in order) that lie side by side in the layout."""
    runs: list[list[int]] = []
    for k in keys:
        a, b = span[k]
        if runs and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return [(a, b) for a, b in runs]
