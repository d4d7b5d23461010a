"""Memory budget of building data: refuse, with the arithmetic, what cannot fit before allocating it.

Separate from ``federation`` because it is a set of measured constants and the checks built on
them, called before anything exists: ``build_federation`` checks its clients' index arrays, and
``Experiment.prepare`` checks a dataset generated per client (``synthetic``) before generating it.
A refusal is a ValueError naming the knobs to lower, instead of a MemoryError or the OOM killer.
"""

from __future__ import annotations

# What building a federation holds at its peak, measured with tracemalloc (Fashion-MNIST, partition
# 'sampled', 1,000-20,000 clients, 2-500 examples and 10-5,000 test examples a client): up to 2,400
# bytes a client (its ClientShard, three array headers, the lists) and 41-50 bytes an index (an
# int64 held about six times over: the draws, their sorted copies, the splits, the shards).
BYTES_PER_CLIENT = 2_400
BYTES_PER_INDEX = 50
# Dataset 'synthetic' is generated per client: about 1,080 bytes an example at the peak (float64
# features, their float32 copy), 50 + E[LogNormal(4, 2)] = 50 + e^6 = 453 examples a client.
SYNTHETIC_BYTES_PER_CLIENT = 1_100 * 454


def available_bytes() -> int:
    """Memory this machine can give without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(need: int, what: str, arithmetic: str, fix: str, available: int | None = None) -> None:
    """ValueError with the arithmetic when ``need`` bytes exceed the memory available: refused
    before anything is allocated, instead of a numpy MemoryError (or the OOM killer) later."""
    avail = available_bytes() if available is None else available
    if need > avail:
        raise ValueError(
            f"{what} needs about {_gib(need)} of memory ({arithmetic} = {need:,} bytes), but this machine "
            f"has {_gib(avail)} available; {fix}"
        )


def federation_bytes(num_clients: int, train_per_client: float, test_per_client: float) -> int:
    """Peak bytes of building ``num_clients`` clients of that many train+val and test indices."""
    return int(num_clients * (BYTES_PER_CLIENT + BYTES_PER_INDEX * (train_per_client + test_per_client)))


def check_federation_fits(
    num_clients: int,
    train_per_client: float,
    test_per_client: float,
    available: int | None = None,
) -> None:
    need = federation_bytes(num_clients, train_per_client, test_per_client)
    check_fits(
        need,
        f"a federation of {num_clients:,} clients ({train_per_client:,.0f} training and "
        f"{test_per_client:,.0f} test examples a client)",
        f"{num_clients:,} clients x ({BYTES_PER_CLIENT:,} + {BYTES_PER_INDEX} x "
        f"{train_per_client + test_per_client:,.0f} indices) bytes",
        "use fewer clients (data.num_clients) or fewer examples a client (data.examples_per_client with "
        "partition 'sampled', data.test_per_client)",
        available,
    )


def check_dataset_fits(name: str, num_clients: int, available: int | None = None) -> None:
    """A dataset generated per client (``synthetic``) is refused before it is generated when it
    cannot fit; file-backed datasets have a fixed size."""
    if name != "synthetic":
        return
    need = num_clients * SYNTHETIC_BYTES_PER_CLIENT
    check_fits(
        need,
        f"dataset 'synthetic' with {num_clients:,} clients",
        f"{num_clients:,} clients x {SYNTHETIC_BYTES_PER_CLIENT:,} bytes (453 examples a client on average)",
        "use fewer clients (data.num_clients)",
        available,
    )
