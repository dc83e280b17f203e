"""DAPL: Domain Adaptation via Prompt Learning on a frozen CLIP.

A pure library: no Prefect, MLflow or DVC imports live here. The orchestration layers (``tasks/``,
``flows/``, ``dvc.yaml``) call these functions.
"""

__version__ = "0.1.0"
