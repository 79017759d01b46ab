"""Joining a Ray cluster, or starting a local one, for sweeps and batch inference."""
from __future__ import annotations

import os

from .errors import NnjitError


def start_ray(address: str | None, log_to_driver: bool = True) -> None:
    """``ray.init``: connect to the cluster at ``address`` (or $RAY_ADDRESS), else
    start a local Ray; NnjitError in one line when the cluster cannot be reached."""
    import ray

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver)
    except ConnectionError as err:
        raise NnjitError(f"cannot reach the Ray cluster at "
                         f"{address or os.environ.get('RAY_ADDRESS')}: {err}") from None
