"""A run folder's prompts as an MLflow model: logged under a run, registered with an alias, loaded back by URI.

The model is :mod:`tasks.adapted_pyfunc` (logged as code) with the run's ``prompts.safetensors``/``prompts.json``
as its artifact; its metadata records the frozen CLIP's identity, the classes, the domain whose prompts classify
and the whole config, so ``models:/NAME@champion`` says what it is without downloading anything.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import polars as pl

from dapl.artifacts import PROMPTS, PROMPTS_META, load_prompts
from dapl.errors import UserError
from dapl.predictions import check_top_k, table_schema
from tasks import tracking

PYFUNC_CODE = Path(__file__).with_name("adapted_pyfunc.py")
ARTIFACT = "prompts"
DEFAULT_ALIAS = "champion"
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class AdaptedModelRef:
    """Where a logged model is: its own URI, and its registered name and version when it was registered."""

    model_uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def registry_uri(self) -> str:
        """``models:/NAME@alias`` (or ``models:/NAME/VERSION``), else the logged model's own URI."""
        if self.name and self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}" if self.name else self.model_uri


def model_name(dataset: str, source: str, target: str, method: str) -> str:
    """``dapl-<dataset>-<source>-<target>-<method>``, in the characters a ``models:/`` URI keeps intact."""
    raw = f"dapl-{dataset}-{source}-{target}-{method.replace('+', 'plus')}"
    return re.sub(r"[^0-9A-Za-z_.-]", "_", raw)


def model_metadata(prompt_dir: str | Path, domain: str | None = None) -> dict:
    """What the model is: the CLIP's identity, the classes, the domain whose prompts classify, the config."""
    _, meta = load_prompts(prompt_dir)
    domains = list(meta["domains"])
    domain = domain or domains[-1]
    if domain not in domains:
        raise UserError(f"--domain {domain}: the prompts in {prompt_dir} have domains {domains}")
    return {"model_identity": meta.get("model_identity", ""), "classnames": list(meta["classnames"]),
            "domain": domain, "domains": domains, "config": meta["config"], "run_dir": str(Path(prompt_dir).absolute())}


def model_signature(n_classes: int, top_k: int = DEFAULT_TOP_K):
    """Input: ``path`` or ``image`` (base64), one per row; output: the prediction table's columns; param top_k."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    k = check_top_k(top_k, n_classes)
    inputs = Schema([ColSpec("string", "path", required=False), ColSpec("string", "image", required=False)])
    outputs = Schema([ColSpec("double" if t == pl.Float64 else "string", c, required=False)  # null: unreadable
                      for c, t in table_schema(k).items()])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("top_k", "long", k)]))


def _requirements() -> list[str]:
    """The installed dapl's pinned dependencies and this mlflow: given, so MLflow does not load the model in a
    subprocess to guess them (a CLIP load per log). Serving needs dapl itself installed (``--env-manager local``)."""
    import mlflow

    reqs = [r for r in importlib_metadata.requires("dapl") or [] if "extra ==" not in r]
    return [*reqs, f"mlflow=={mlflow.__version__}"]


def log_adapted_model(tracking_uri: str, run_id: str, prompt_dir: str | Path, register_name: str | None = None,
                      alias: str | None = DEFAULT_ALIAS, domain: str | None = None) -> AdaptedModelRef:
    """Log ``prompt_dir``'s prompts as a pyfunc model under run ``run_id``; with ``register_name``, register it as
    a new version of that model and point ``alias`` at it."""
    import mlflow
    from mlflow.models import Model

    meta = model_metadata(prompt_dir, domain)
    mlflow.set_tracking_uri(tracking_uri)  # Model.log resolves the store from the process's URI
    with tempfile.TemporaryDirectory(prefix="dapl-model-") as tmp:
        staged = Path(tmp) / ARTIFACT
        staged.mkdir()
        for f in (PROMPTS, PROMPTS_META):
            src = Path(prompt_dir) / f
            if src.is_symlink():
                raise UserError(f"{src}: is a link; register a run folder whose prompt files are its own")
            if src.is_file():
                shutil.copyfile(src, staged / f)
        with warnings.catch_warnings():  # an input example would load the CLIP at every log, to check it
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = Model.log(artifact_path=None, name="adapted_classifier", flavor=mlflow.pyfunc, run_id=run_id,
                             python_model=str(PYFUNC_CODE), artifacts={ARTIFACT: str(staged)},
                             signature=model_signature(len(meta["classnames"])), metadata={"dapl": meta},
                             model_config={"serving.domain": meta["domain"], "serving.device": "",
                                           "serving.top_k": DEFAULT_TOP_K},  # also the run's params: prefixed
                             pip_requirements=_requirements(), registered_model_name=register_name,
                             await_registration_for=60)
    if not register_name:
        return AdaptedModelRef(info.model_uri)
    version = str(info.registered_model_version)
    c = tracking.client(tracking_uri)
    c.set_model_version_tag(register_name, version, "dapl.model_identity", meta["model_identity"])
    c.set_model_version_tag(register_name, version, "dapl.domain", meta["domain"])
    c.set_model_version_tag(register_name, version, "dapl.run_dir", meta["run_dir"])
    if alias:
        c.set_registered_model_alias(register_name, alias, version)
    return AdaptedModelRef(info.model_uri, register_name, version, alias or None)


def register_trained_run(uri: str, run_id: str, out_dir: str | Path, dataset: str, spec) -> bool:
    """The flow's ``register_models``: a finished run's prompts registered as :func:`model_name` says (best
    effort, like every MLflow call of a run); a run without learned prompts (the manual prompt) is skipped."""
    if not (Path(out_dir) / PROMPTS).is_file():
        return False
    name = model_name(dataset, spec.source, spec.target, spec.label)
    return tracking.best_effort(f"register {name}", log_adapted_model, uri, run_id, out_dir, name)


def register_run_folder(run_dir: str | Path, name: str, alias: str | None = DEFAULT_ALIAS,
                        tracking_uri: str | None = None, experiment: str = "dapl",
                        domain: str | None = None) -> AdaptedModelRef:
    """``dapl register``: a run folder trained outside the flow, in an MLflow run of its own, registered."""
    run_dir = Path(run_dir)
    if not (run_dir / PROMPTS_META).is_file():
        raise UserError(f"{run_dir}: no {PROMPTS_META}; point to a folder written by `dapl train`")
    model_metadata(run_dir, domain)  # a bad --domain fails before any run is made
    uri = tracking.resolve_uri(tracking_uri)
    tracking.check_tracking(uri)
    exp = tracking.ensure_experiment(uri, experiment)
    run_id = tracking.start_run(uri, exp, f"register {run_dir.name}", {"dapl.run_dir": str(run_dir.absolute())})
    try:
        ref = log_adapted_model(uri, run_id, run_dir, name, alias, domain)
    except BaseException:
        tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")
    return ref


def load_adapted_model(model_uri: str, tracking_uri: str | None = None, device: str | None = None):
    """The pyfunc model at ``model_uri`` (``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/...``, a
    folder); a URI that names nothing is one line saying so."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking.resolve_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri, model_config={"serving.device": device} if device else None)
    except (MlflowException, OSError) as e:
        msg = " ".join(str(getattr(e, "message", e)).split())[:300]
        raise UserError(f"--model {model_uri}: cannot be loaded from {uri} ({msg}); register a run folder with "
                        "`dapl register RUN --name NAME`, or set MLFLOW_TRACKING_URI to the store holding it") from None


def classify_with(model, top_k: int = DEFAULT_TOP_K) -> Callable[[list[Path]], pl.DataFrame]:
    """A chunk of files -> the prediction table's rows, through the pyfunc model (what ``dapl predict --model``
    feeds :func:`dapl.predictions.predict_table`)."""
    import pandas as pd

    def classify(files: list[Path]) -> pl.DataFrame:
        out = model.predict(pd.DataFrame({"path": [str(f) for f in files]}), params={"top_k": top_k})
        k = sum(1 for c in out.columns if c.endswith("_class"))
        return pl.from_pandas(out, nan_to_null=True).cast(table_schema(k))  # an all-null column has no type

    return classify
