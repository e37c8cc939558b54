"""Synthetic Criteo-like CTR data with a planted click model and its oracle metrics.

    recsys synth ctr --out data/synthetic_ctr                      # `make run`: 8,000,000 rows
    recsys synth ctr --out /tmp/ctr --rows 20000 --seed 7 --spec features/synthetic.yaml

Every row has the columns of the spec (``features/synthetic.yaml``: 13 dense counters, 26
categorical fields with Criteo Kaggle's cardinalities, bags M1 / M2) and a label drawn from

    logit = bias + c_main  * sum_f  imp_f w(r_f) z_f(r_f)                    (main effects)
                 + c_cross * sum_(f,g) <u_f(r_f), v_g(r_g)>                   (pairwise crosses)
                 + c_dense * sum_j beta_j x_j                                 (dense, as stored)
    p = sigmoid(logit),  label ~ Bernoulli(p)

* ``r_f`` is the row's Zipf rank of feature ``f`` (exponent 1.05 .. 1.3, over cardinality - 1
  values); the raw id written is ``scramble32(r_f)``, a salted 32-bit bijection, so raw ids look
  like Criteo hashes and the writer's vocabulary (by training frequency) has to rediscover the ranks.
* ``z_f(r)``, ``u_f(r)``, ``v_g(r)`` are standard normals hashed from ``(seed, f, component, r)``:
  no per-id storage, even for 10^7-value features. Bags (multi-valued) use the mean over their ids.
* ``w(r) = 1 / (1 + (r - 1) / head_ranks)`` puts the effect variance on the head ids (seen often
  enough to be learned); the long tail of huge features carries little signal, so a full-table
  model trained on this data can get close to the oracle.
* ``x_j`` is the dense value as the writer stores it (``log1p(max(x, 0))``, missing -> 0).
* ``c_main``, ``c_cross``, ``c_dense`` and ``bias`` are calibrated on a pilot sample so the
  logit has standard deviation ``logit_std`` split by ``main_share`` / ``cross_share`` and the
  mean click probability is ``base_rate``.

Rows come in chunks of ``chunk_rows``, chunk ``k`` from ``default_rng([seed, 1, k])``: any chunk
can be regenerated alone (:func:`ctr_true_probabilities` does, for tests and for training to
score itself against the oracle).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from recsys import metrics
from recsys.data.synthetic import (
    check_positive_int,
    derive_key,
    hash_normal,
    scramble32,
    split_rows,
    zipf_ranks,
)
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec, DenseFeature, LabelFeature, SparseFeature, builtin_spec


@dataclass(frozen=True)
class CtrSettings:
    """Knobs of the planted model (recorded in the manifest under ``generator``).

    Args:
        base_rate: target mean click probability. Default 0.25.
        logit_std: target standard deviation of the planted logit (sets the oracle AUC, ~0.80 at 1.4). Default 1.4.
        main_share: share of the logit variance from per-id main effects. Default 0.55.
        cross_share: share from the pairwise crosses; dense terms get the rest. Default 0.25.
        head_ranks: effect scale ``w(r) = 1 / (1 + (r - 1) / head_ranks)``. Default 200.
        zipf_min: smallest per-feature Zipf exponent. Default 1.05.
        zipf_max: largest per-feature Zipf exponent. Default 1.3.
        cross_rank: dimension of the cross vectors ``u_f``, ``v_g``. Default 4.
        cross_pairs: number of crossed feature pairs. Default 6.
        cross_max_cardinality: only single-valued features up to this cardinality are crossed. Default 20000.
        bag_empty: probability that a bag is empty (on top of Poisson zeros). Default 0.05.
        chunk_rows: rows generated per chunk (bounds memory). Default 200000.
        pilot_rows: rows of the calibration sample. Default 50000.
    """

    base_rate: float = 0.25
    logit_std: float = 1.4
    main_share: float = 0.55
    cross_share: float = 0.25
    head_ranks: int = 200
    zipf_min: float = 1.05
    zipf_max: float = 1.3
    cross_rank: int = 4
    cross_pairs: int = 6
    cross_max_cardinality: int = 20_000
    bag_empty: float = 0.05
    chunk_rows: int = 200_000
    pilot_rows: int = 50_000


# Criteo Kaggle-like counters: (missing rate, median, log-scale sigma, rate of negative values).
_DENSE_SHAPES: tuple[tuple[float, float, float, float], ...] = (
    (0.45, 1.0, 1.2, 0.0),  # I1
    (0.00, 3.0, 1.8, 0.03),  # I2: Criteo's only field with negatives (-1 .. -3)
    (0.21, 6.0, 1.5, 0.0),  # I3
    (0.22, 4.0, 1.1, 0.0),  # I4
    (0.03, 2800.0, 1.5, 0.0),  # I5
    (0.22, 30.0, 1.6, 0.0),  # I6
    (0.04, 3.0, 1.6, 0.0),  # I7
    (0.0005, 8.0, 1.0, 0.0),  # I8
    (0.04, 37.0, 1.2, 0.0),  # I9
    (0.45, 0.6, 0.6, 0.0),  # I10
    (0.04, 1.0, 1.0, 0.0),  # I11
    (0.77, 0.2, 1.5, 0.0),  # I12
    (0.22, 4.0, 1.1, 0.0),  # I13
)


_TABLE_MAX = 1 << 20  # features with more values hash their per-id parameters per row


@dataclass(frozen=True)
class _SparsePlan:
    feature: SparseFeature
    index: int  # position among the spec's sparse features (hash stream id)
    num_values: int  # distinct raw values: cardinality - 1
    exponent: float  # Zipf exponent
    importance: float  # relative scale of the main effect
    salt: int  # scramble32 salt of the raw ids


@dataclass
class _Draw:
    columns: dict[str, Any]  # raw column arrays (dense float64 with NaN, ids int64, bags pa.ListArray)
    main: np.ndarray  # (n,) unscaled main-effect logit
    cross: np.ndarray  # (n,) unscaled cross logit
    dense: np.ndarray  # (n,) unscaled dense logit


def _check_spec(spec: DatasetSpec) -> None:
    problems = [f"{f.name}: cardinality 'raw'" for f in spec.sparse if not f.has_vocab]
    if spec.label is None:
        problems.append("no label feature")
    if spec.timestamp is not None:
        problems.append(f"timestamp {spec.timestamp!r}")
    if problems:
        raise ValueError(
            f"--spec {spec.name}: the CTR generator needs a label, integer cardinalities and no timestamp; "
            f"got {', '.join(problems)}"
        )


class CtrGenerator:
    """The planted click model of one ``(spec, seed, settings)``; draws chunks of rows.

    Args:
        spec: feature spec (label, dense, sparse single- and multi-valued, integer cardinalities).
        seed: non-negative integer seed; all randomness derives from it.
        settings: planted-model knobs. Default :class:`CtrSettings`.

    Raises:
        ValueError: the spec has ``cardinality: raw``, no label or a timestamp; the seed is negative.
    """

    def __init__(self, spec: DatasetSpec, seed: int, settings: CtrSettings = CtrSettings()):
        _check_spec(spec)
        check_positive_int("--seed", seed, 0, "numpy seeds are non-negative")
        self.spec = spec
        self.seed = int(seed)
        self.settings = settings
        params = np.random.default_rng([self.seed, 0])
        n_sparse = len(spec.sparse)
        # Spread exponents over the features, independent of the seed (a stable shape).
        spread = [((7 * i) % n_sparse) / max(n_sparse - 1, 1) for i in range(n_sparse)]
        self.sparse = [
            _SparsePlan(
                feature=f,
                index=i,
                num_values=int(f.cardinality) - 1,
                exponent=settings.zipf_min + (settings.zipf_max - settings.zipf_min) * spread[i],
                importance=float(params.uniform(0.3, 1.0)),
                salt=int(params.integers(0, 2**32)),
            )
            for i, f in enumerate(spec.sparse)
        ]
        self.dense_beta = params.normal(0.0, 1.0, len(spec.dense))  # (J,)
        crossable = [
            p for p in self.sparse if not p.feature.multi_valued and p.num_values + 1 <= settings.cross_max_cardinality
        ]
        num_pairs = min(settings.cross_pairs, len(crossable) // 2)
        self.pairs = [(crossable[2 * k], crossable[2 * k + 1]) for k in range(num_pairs)]
        # Per-id parameters are pure functions of (seed, feature, rank); for features up to
        # _TABLE_MAX values they are evaluated once into lookup tables (index = rank), a cache
        # that saves re-hashing the head ids in every chunk. Huge features hash per row.
        self._effect_tables = {
            p.feature.name: self._effect(p, np.arange(p.num_values + 1)) for p in self.sparse if p.num_values <= _TABLE_MAX
        }
        self._cross_tables = {
            (p.feature.name, side): self._cross_vectors(p, np.arange(p.num_values + 1), side)
            for pair in self.pairs
            for side, p in enumerate(pair)
        }
        self.c_main = self.c_cross = self.c_dense = 1.0
        self.bias = 0.0
        self._calibrate()

    # -- per-id parameters ----------------------------------------------------------------------
    def _weight(self, ranks: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + (ranks - 1) / self.settings.head_ranks)  # (n,)

    def _effect(self, plan: _SparsePlan, ranks: np.ndarray) -> np.ndarray:
        key = derive_key(self.seed, plan.index, 0)
        return plan.importance * self._weight(ranks) * hash_normal(key, ranks)  # (n,)

    def _cross_vectors(self, plan: _SparsePlan, ranks: np.ndarray, side: int) -> np.ndarray:
        k = self.settings.cross_rank
        w = self._weight(ranks)  # (n,)
        cols = [hash_normal(derive_key(self.seed, plan.index, 1 + side, c), ranks) for c in range(k)]
        return np.stack(cols, axis=1) * w[:, None]  # (n, k)

    def _lookup_effect(self, plan: _SparsePlan, ranks: np.ndarray) -> np.ndarray:
        table = self._effect_tables.get(plan.feature.name)
        return table[ranks] if table is not None else self._effect(plan, ranks)  # (n,)

    # -- drawing --------------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, n: int) -> _Draw:
        columns: dict[str, Any] = {}
        dense = np.zeros(n)  # (n,)
        for j, f in enumerate(self.spec.dense):
            missing, median, sigma, negative = _DENSE_SHAPES[j % len(_DENSE_SHAPES)]
            x = np.floor(np.exp(np.log1p(median) + sigma * rng.standard_normal(n))) - 1.0  # (n,)
            x = np.maximum(x, 0.0)
            if negative:
                x = np.where(rng.random(n) < negative, -rng.integers(1, 4, n).astype(np.float64), x)
            x[rng.random(n) < missing] = np.nan
            columns[f.name] = x
            stored = np.nan_to_num(x, nan=0.0)  # what DatasetWriter stores, so a model sees it
            if f.transform == "log1p":
                stored = np.log1p(np.maximum(stored, 0.0))
            dense += self.dense_beta[j] * stored
        main = np.zeros(n)  # (n,)
        ranks: dict[str, np.ndarray] = {}
        for plan in self.sparse:
            f = plan.feature
            if not f.multi_valued:
                r = zipf_ranks(rng, n, plan.num_values, plan.exponent)  # (n,)
                ranks[f.name] = r
                columns[f.name] = scramble32(r, plan.salt)
                main += self._lookup_effect(plan, r)
                continue
            lengths = np.minimum(rng.poisson(0.4 * f.max_length, n), f.max_length)  # (n,)
            lengths[rng.random(n) < self.settings.bag_empty] = 0
            r = zipf_ranks(rng, int(lengths.sum()), plan.num_values, plan.exponent)  # (L,)
            offsets = np.zeros(n + 1, np.int32)  # (n + 1,)
            np.cumsum(lengths, out=offsets[1:])
            columns[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scramble32(r, plan.salt)))
            row = np.repeat(np.arange(n), lengths)  # (L,)
            sums = np.bincount(row, weights=self._lookup_effect(plan, r), minlength=n)  # (n,)
            main += sums / np.maximum(lengths, 1)
        cross = np.zeros(n)  # (n,)
        for a, b in self.pairs:
            u = self._cross_tables[a.feature.name, 0][ranks[a.feature.name]]  # (n, k)
            v = self._cross_tables[b.feature.name, 1][ranks[b.feature.name]]  # (n, k)
            cross += np.einsum("nk,nk->n", u, v)
        return _Draw(columns, main, cross, dense)

    def _logit(self, draw: _Draw) -> np.ndarray:
        return self.bias + self.c_main * draw.main + self.c_cross * draw.cross + self.c_dense * draw.dense  # (n,)

    def _calibrate(self) -> None:
        """Scale the three logit parts to their variance shares, then solve the bias for base_rate."""
        s = self.settings
        pilot = self._draw(np.random.default_rng([self.seed, 2]), s.pilot_rows)
        var = s.logit_std**2
        shares = {"main": s.main_share, "cross": s.cross_share if self.pairs else 0.0}
        shares["dense"] = max(0.0, 1.0 - shares["main"] - shares["cross"]) if self.spec.dense else 0.0
        for part, share in shares.items():
            std = float(getattr(pilot, part).std())
            setattr(self, f"c_{part}", float(np.sqrt(share * var) / std) if std > 0 else 0.0)
        centered = self._logit(pilot)  # (P,) with bias 0
        lo, hi = -20.0, 20.0
        for _ in range(60):  # bisection: mean sigmoid is increasing in the bias
            mid = 0.5 * (lo + hi)
            if np.mean(_sigmoid(centered + mid)) < s.base_rate:
                lo = mid
            else:
                hi = mid
        self.bias = 0.5 * (lo + hi)

    def chunk(self, k: int, rows: int) -> tuple[pa.Table, np.ndarray]:
        """Chunk ``k`` of a data set of ``rows`` rows: its raw table and true click probabilities.

        Returns:
            ``(table, p)``: the raw columns in spec order (what :class:`DatasetWriter` takes) and
            ``(n,)`` float64 true probabilities; the labels in the table are Bernoulli(p) draws.
        """
        start = k * self.settings.chunk_rows
        n = min(rows - start, self.settings.chunk_rows)
        if n <= 0:
            raise ValueError(f"chunk {k} starts at row {start}, past the data set's {rows} rows")
        rng = np.random.default_rng([self.seed, 1, k])
        draw = self._draw(rng, n)
        p = _sigmoid(self._logit(draw))  # (n,)
        labels = (rng.random(n) < p).astype(np.float32)  # (n,)
        arrays = []
        for f in self.spec.features:
            if isinstance(f, LabelFeature):
                arrays.append(pa.array(labels))
            elif isinstance(f, DenseFeature):
                arrays.append(pa.array(draw.columns[f.name], pa.float64(), from_pandas=True))  # NaN = missing -> null
            else:
                col = draw.columns[f.name]
                arrays.append(col if isinstance(col, pa.Array) else pa.array(col, pa.int64()))
        return pa.Table.from_arrays(arrays, names=[f.name for f in self.spec.features]), p

    def chunks(self, rows: int) -> Iterator[tuple[int, pa.Table, np.ndarray]]:
        """``(first row, table, p)`` for every chunk of a ``rows``-row data set, in order."""
        for k in range(-(-rows // self.settings.chunk_rows)):
            table, p = self.chunk(k, rows)
            yield k * self.settings.chunk_rows, table, p

    def describe(self) -> dict[str, Any]:
        """The generator settings and fitted constants, for the manifest."""
        return {
            "kind": "ctr",
            "seed": self.seed,
            "settings": dataclasses.asdict(self.settings),
            "bias": self.bias,
            "scales": {"main": self.c_main, "cross": self.c_cross, "dense": self.c_dense},
            "crosses": [[a.feature.name, b.feature.name] for a, b in self.pairs],
            "dense_beta": {f.name: float(b) for f, b in zip(self.spec.dense, self.dense_beta)},
            "sparse": {
                p.feature.name: {
                    "values": p.num_values,
                    "zipf_exponent": round(p.exponent, 4),
                    "importance": round(p.importance, 4),
                }
                for p in self.sparse
            },
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _oracle(split: str, labels: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    return {
        "auc": metrics.auc(labels, p) if 0 < labels.sum() < labels.size else None,
        "logloss": metrics.logloss(labels, p),
        "split": split,
        "rows": int(labels.size),
        "base_rate": float(labels.mean()),
        "mean_probability": float(p.mean()),
    }


def generate_ctr(
    out_dir: str | Path,
    *,
    rows: int,
    seed: int = 0,
    spec: DatasetSpec | None = None,
    settings: CtrSettings = CtrSettings(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate a CTR data set through :class:`DatasetWriter` and record its oracle.

    Args:
        out_dir: output folder (the ingest layout, see :mod:`recsys.data.layout`).
        rows: total rows, split 80 / 10 / 10 in row order; at least 10.
        seed: non-negative seed. Default 0.
        spec: feature spec. Default ``features/synthetic.yaml``.
        settings: planted-model knobs. Default :class:`CtrSettings`.
        log: called with one progress line per chunk. Default: silent.

    Returns:
        The manifest; ``oracle`` / ``oracle_validation`` hold AUC and logloss of the true
        probabilities on the test / validation rows, ``generator`` the planted model.

    Raises:
        ValueError: ``rows`` < 10, a negative seed, or a spec the generator cannot fill.
    """
    check_positive_int("--rows", rows, 10, "train, validation and test each need rows")
    t0 = time.perf_counter()
    spec = spec or builtin_spec("synthetic")
    gen = CtrGenerator(spec, seed, settings)
    if log:
        log(f"  planted model calibrated on {settings.pilot_rows:,} pilot rows ({time.perf_counter() - t0:.1f} s); "
            f"generating {rows:,} rows in chunks of {settings.chunk_rows:,}")
    ranges = split_rows(rows)
    with DatasetWriter(out_dir, spec) as writer:
        positives = {s: 0.0 for s in ranges}
        kept: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"validation": ([], []), "test": ([], [])}
        for start, table, p in gen.chunks(rows):
            stop = start + table.num_rows
            labels = table.column(spec.label.name).to_numpy()  # (n,)
            for split, (lo, hi) in ranges.items():
                a, b = max(lo, start), min(hi, stop)
                if a >= b:
                    continue
                writer.add(split, table.slice(a - start, b - a))
                positives[split] += float(labels[a - start : b - start].sum())
                if split in kept:
                    kept[split][0].append(labels[a - start : b - start])
                    kept[split][1].append(p[a - start : b - start])
            if log:
                log(f"  generated rows {stop:,} / {rows:,} ({time.perf_counter() - t0:.1f} s)")
        oracle = {s: _oracle(s, np.concatenate(y), np.concatenate(q)) for s, (y, q) in kept.items()}
        return writer.finish(
            source={"kind": "synthetic", "generator": "ctr", "seed": int(seed), "rows": rows},
            split={
                "method": "row_order",
                "fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
                "rows": {s: [lo, hi] for s, (lo, hi) in ranges.items()},
            },
            extra={
                "label_rate": {s: positives[s] / max(hi - lo, 1) for s, (lo, hi) in ranges.items()},
                "oracle": oracle["test"],
                "oracle_validation": oracle["validation"],
                "generator": gen.describe(),
                "generation_seconds": round(time.perf_counter() - t0, 2),
            },
        )


def ctr_true_probabilities(
    rows: int,
    seed: int = 0,
    split: str = "test",
    spec: DatasetSpec | None = None,
    settings: CtrSettings = CtrSettings(),
) -> tuple[np.ndarray, np.ndarray]:
    """Re-generate one split of ``generate_ctr(rows=rows, seed=seed, ...)``: true p and labels.

    Returns:
        ``(p, labels)``, both ``(rows in split,)``, in the order the split's parquet files hold them.
    """
    ranges = split_rows(rows)
    if split not in ranges:
        raise ValueError(f"split {split!r}: allowed {sorted(ranges)}")
    lo, hi = ranges[split]
    spec = spec or builtin_spec("synthetic")
    gen = CtrGenerator(spec, seed, settings)
    size = settings.chunk_rows
    ps, ys = [], []
    for k in range(lo // size, -(-hi // size)):  # only the chunks that overlap the split
        table, p = gen.chunk(k, rows)
        start = k * size
        a, b = max(lo, start), min(hi, start + table.num_rows)
        ps.append(p[a - start : b - start])
        ys.append(table.column(spec.label.name).to_numpy()[a - start : b - start])
    return np.concatenate(ps), np.concatenate(ys)
