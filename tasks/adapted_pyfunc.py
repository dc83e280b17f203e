"""The adapted classifier as an MLflow pyfunc model, logged as code: MLflow 3 refuses pickled models by default,
so this file is copied into every logged model and run when the model loads (it needs only dapl and mlflow).

Input: a DataFrame with a ``path`` column (image files) or an ``image`` column (base64-encoded image bytes), one
of the two per row. Output: :func:`dapl.predictions.table_schema`'s columns (class, probability, top-k, error).
"""

from __future__ import annotations

import base64
import binascii

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

from dapl.artifacts import AdaptedClassifier, UnreadableImageError, decode_image, read_image
from dapl.predictions import prediction_rows


def _given(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _decode_row(i: int, path: object, image: object) -> Image.Image | UnreadableImageError:
    """Row ``i``'s image, or why it has none."""
    if _given(path) == _given(image):
        return UnreadableImageError(f"row {i}", "give exactly one of `path` and `image`")
    try:
        if _given(path):
            return read_image(str(path))
        try:
            data = base64.b64decode(str(image), validate=True)
        except (binascii.Error, ValueError):
            return UnreadableImageError(f"row {i} image", "not base64-encoded bytes")
        return decode_image(data, f"row {i} image")
    except UnreadableImageError as e:
        return e


def decode_inputs(frame: pd.DataFrame) -> list[Image.Image | UnreadableImageError]:
    """Each row's image (from its ``path`` or its base64 ``image``), or the error that kept it from being read."""
    n = len(frame)
    paths = frame["path"].tolist() if "path" in frame else [None] * n
    images = frame["image"].tolist() if "image" in frame else [None] * n
    return [_decode_row(i, p, b) for i, (p, b) in enumerate(zip(paths, images, strict=True))]


class AdaptedPyfunc(PythonModel):
    """A frozen CLIP + learned prompts behind MLflow's pyfunc interface (``predict``, ``mlflow models serve``)."""

    def load_context(self, context) -> None:
        """Rebuilds the CLIP of the prompts' config; it must be the one they were learned on (checked by
        :meth:`AdaptedClassifier.load`: a different weights file at that path is a one-line error)."""
        cfg = context.model_config or {}
        self.top_k = int(cfg.get("serving.top_k") or 3)
        self.clf = AdaptedClassifier.load(context.artifacts["prompts"], domain=cfg.get("serving.domain") or None,
                                          device=cfg.get("serving.device") or None)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        top_k = int((params or {}).get("top_k") or self.top_k)
        table = prediction_rows(self.clf.predict_decoded(decode_inputs(frame)), self.clf.classnames, top_k)
        # columns of Python objects: an unreadable row's class and probabilities are None (JSON null in a served
        # answer; pandas would make them NaN, which is not JSON)
        return pd.DataFrame({c: pd.Series(table[c].to_list(), dtype=object) for c in table.columns})


mlflow.models.set_model(AdaptedPyfunc())
