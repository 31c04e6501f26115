"""The part that runs on Ray: ``_connect`` (join or start a cluster), ``_dataset`` (a dataset of paths mapped in
batches by a pool of :class:`~cxr_hub.ray_batch.actor.PipelineActor`), ``_ClusterStream`` (the dataset inside the
cluster, for Ray Client) and ``_rows_from_ray``, which streams the rows' tables to the driver either way.

Every ``import ray`` of the package is here, inside these functions. Imports :mod:`~cxr_hub.ray_batch.spec` and
:mod:`~cxr_hub.ray_batch.actor`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .actor import PipelineActor
from .spec import PipelineSpec, RayOptions

if TYPE_CHECKING:
    import pyarrow as pa


def _rows_from_ray(
    todo: list[tuple[Path, str]],
    header: list[str],
    settings: dict[str, str],
    spec: PipelineSpec,
    options: RayOptions,
) -> Iterator[pa.Table]:
    """The Ray Data part: a dataset of paths → actor-pool ``map_batches`` → the rows' tables, streamed here.

    Through Ray Client (``ray://``) the dataset runs in a :class:`_ClusterStream` actor on the cluster, which hands
    the tables over one call at a time: Ray Data's executor needs a real Ray worker process, which a client is not.
    """
    started = _connect(options)
    import ray

    try:
        items = [{"path": os.fsencode(p), "file": n} for p, n in todo]
        args = (items, header, settings, spec, options)
        if ray.util.client.ray.is_connected():
            stream = ray.remote(num_cpus=0)(_ClusterStream).remote(*args)
            try:
                while (table := ray.get(stream.next.remote())) is not None:
                    yield table
            finally:
                ray.kill(stream)
        else:
            yield from _dataset(*args).iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        if started:
            ray.shutdown()


def _dataset(
    items: list[dict[str, Any]],
    header: list[str],
    settings: dict[str, str],
    spec: PipelineSpec,
    options: RayOptions,
) -> Any:
    """The Ray dataset of a run: the paths, mapped in batches by a pool of :class:`PipelineActor`."""
    import ray.data

    if options.workers is not None:
        compute = ray.data.ActorPoolStrategy(size=options.workers)
    else:
        compute = ray.data.ActorPoolStrategy(min_size=1, max_size=None)
    return ray.data.from_items(items).map_batches(
        PipelineActor,
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=compute,
        fn_constructor_kwargs={
            "spec": spec,
            "header": header,
            "settings": settings,
            "device": spec.device,
            "threads": options.threads,
        },
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
        udf_modifying_row_count=False,
    )


class _ClusterStream:
    """Runs a run's dataset inside the cluster and returns its tables one :meth:`next` call at a time (Ray Client)."""

    def __init__(self, *args: Any) -> None:
        self._tables = iter(_dataset(*args).iter_batches(batch_size=None, batch_format="pyarrow"))

    def next(self) -> pa.Table | None:
        """The next table of rows, or None at the end."""
        return next(self._tables, None)


def _connect(options: RayOptions) -> bool:
    """Connects to (or starts) Ray unless this process already is connected; True when this call connected."""
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and "ray" not in sys.modules:
        # A private instance for one command must not listen on the network: with clusters "disabled" Ray takes
        # 127.0.0.1 as the node address and binds its servers there. Read by Ray at import, hence before it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local", num_cpus=options.local_cpus, include_dashboard=False)
    else:
        ray.init(address=address)
    return True
