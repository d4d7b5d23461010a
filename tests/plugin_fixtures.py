"""Tiny plug-ins of each kind, written as a user outside raysim would (tests/test_plugins.py and
tests/runtime/test_plugins_ray.py name them by import path ``tests.plugin_fixtures:...`` and by
entry point), plus broken ones for the error paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from raysim.algorithms import AlgoParams, ClientResult, LinearSum, ServerContext, Traits
from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.fedavg import FedAvg, GlobalState
from raysim.data import Dataset

# ------------------------------------------------------------------------------------ algorithm


class DampedParams(AlgoParams):
    damping: float = Field(0.5, gt=0, le=1)  # the server moves this fraction of the averaged update


class DampedAvg(FedAvg):
    """FedAvg whose server takes only ``damping`` of the averaged update (a plug-in with a knob)."""

    name: ClassVar[str] = "damped-avg"
    params_model: ClassVar[type[AlgoParams]] = DampedParams
    traits = Traits(linear=True)

    def aggregate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[GlobalState, dict[str, float]]:
        total = LinearSum.of(results)
        new = fedavg_step(state.params, total, self.p.damping)
        return replace(state, params=new), {"aggregated_clients": float(total.num_clients if total else 0)}


@dataclass(frozen=True, kw_only=True)
class TallyState:
    """A plug-in's own server state (a dataclass of this module, not raysim's): checkpoints keep it."""

    inner: GlobalState
    aggregations: int


class TallyAvg(FedAvg):
    """FedAvg counting its aggregations in a state dataclass of its own module."""

    name: ClassVar[str] = "tally-avg"

    def init(self, params, ctx):  # type: ignore[no-untyped-def]
        return TallyState(inner=super().init(params, ctx), aggregations=0)

    def configure_round(self, state, rnd):  # type: ignore[no-untyped-def]
        inner, plan = super().configure_round(state.inner, rnd)
        return replace(state, inner=inner), plan

    def aggregate(self, state, results, server):  # type: ignore[no-untyped-def]
        inner, metrics = super().aggregate(state.inner, results, server)
        n = state.aggregations + 1
        return TallyState(inner=inner, aggregations=n), {**metrics, "aggregations": float(n)}

    def server_model(self, state):  # type: ignore[no-untyped-def]
        return state.inner.params


class NotAnAlgorithm:
    """Has a name and nothing else an algorithm needs."""

    name = "broken"


# ---------------------------------------------------------------------------------------- model


class TinyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(16, ge=1)


def tiny_mlp(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """One hidden layer of ``width`` units, for images or vectors."""
    d = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, num_classes))


tiny_mlp.params_model = TinyParams  # type: ignore[attr-defined]


def bare_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model without params_model: it takes no keys."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def colour_only(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model made for 3x32x32 images only (it says so for any other shape)."""
    if tuple(input_shape) != (3, 32, 32):
        raise ValueError(f"colour_only takes 3x32x32 images, got {input_shape}")
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))


NOT_CALLABLE = 3


def bad_params_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return bare_model(input_shape, num_classes)


bad_params_model.params_model = dict  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------------- dataset


class BlobParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    per_client: int = Field(40, ge=4)  # examples a client (train + test)
    natural: bool = True  # fill natural_train / natural_test (federated by nature)
    missing: bool = False  # pretend the data is not there (for check)


def blobs(*, data_dir: str | None, seed: int, num_clients: int, params: BlobParams) -> Dataset:
    """Three Gaussian blobs in 5 dimensions; each client draws from its own shifted copy."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(3, 5))
    xs_tr, ys_tr, xs_te, ys_te, nat_tr, nat_te = [], [], [], [], [], []
    n_tr_each = params.per_client * 3 // 4
    for k in range(num_clients):
        y = rng.integers(0, 3, size=params.per_client)
        x = centres[y] + rng.normal(0, 1, size=(params.per_client, 5)) + 0.3 * k
        xs_tr.append(x[:n_tr_each])
        ys_tr.append(y[:n_tr_each])
        xs_te.append(x[n_tr_each:])
        ys_te.append(y[n_tr_each:])
        nat_tr.append(np.arange(k * n_tr_each, (k + 1) * n_tr_each))
        n_te = params.per_client - n_tr_each
        nat_te.append(np.arange(k * n_te, (k + 1) * n_te))
    return Dataset(
        name="blobs",
        x_train=np.concatenate(xs_tr).astype(np.float32),
        y_train=np.concatenate(ys_tr).astype(np.int64),
        x_test=np.concatenate(xs_te).astype(np.float32),
        y_test=np.concatenate(ys_te).astype(np.int64),
        num_classes=3,
        input_shape=(5,),
        mean=(),
        std=(),
        natural_train=tuple(nat_tr) if params.natural else None,
        natural_test=tuple(nat_te) if params.natural else None,
    )


def _blobs_check(*, data_dir: str | None, params: BlobParams) -> str | None:
    return "blobs: the data is not there (params.missing)" if params.missing else None


blobs.params_model = BlobParams  # type: ignore[attr-defined]
blobs.check = _blobs_check  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ partition


class StripeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shift: int = Field(0, ge=0)  # client k gets the positions p with (p + shift) % num_clients == k


def stripes(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, params: StripeParams
) -> list[np.ndarray]:
    """Deal the positions round-robin (shuffled within each client)."""
    pos = np.arange(len(labels))
    return [rng.permutation(pos[(pos + params.shift) % num_clients == k]) for k in range(num_clients)]


stripes.params_model = StripeParams  # type: ignore[attr-defined]


def too_few(labels: np.ndarray, num_clients: int, rng: np.random.Generator, params: None) -> list[np.ndarray]:
    """A broken partition: one client short."""
    return [np.arange(2) for _ in range(num_clients - 1)]
