"""Prefect flows over the ``tasks`` layer: the ``dapl`` flow and its deployments (``full-benchmark``, ``ablations``,
``adapt``).

Run locally with ``python -m flows run full-benchmark``; serve the deployments with ``python -m flows serve``
(``scripts/serve.sh`` does that next to a local Prefect server).
"""

from tasks import _env  # noqa: F401  (PREFECT_HOME under the project before prefect is imported)
