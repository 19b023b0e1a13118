"""The MLflow pyfunc face of a registered LCH model ("models from code").

MLflow copies this file into each logged model and executes it on ``mlflow.pyfunc.load_model``;
:func:`mlflow.models.set_model` names the object it serves. No Python object is pickled: the
weights are the model's ``weights`` artifact, a :meth:`lch.model.LCHModel.to_state` dict that
loads with ``torch.load(weights_only=True)``. Loading needs the ``lch`` package importable (the
platform's own environment or image).

``predict`` takes crops (N, S, S) float32 in [0, 1] and returns P(high) (N,) float32.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from lch.model import LCHModel

WEIGHTS_ARTIFACT = "weights"
# Bounds memory when a client sends a whole movie's cells at once.
PREDICT_CHUNK = 256


class LCHPyfunc(PythonModel):
    """P(high) per crop from an :class:`lch.model.LCHModel` rebuilt from its state file."""

    # MLflow's switch (its ChatModel uses it) to skip wrapping predict for type-hint validation,
    # which would warn on every load: the logged tensor signature is the contract here.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        """Rebuild the model from its ``weights`` artifact (plain tensors, nothing unpickled)."""
        path = context.artifacts[WEIGHTS_ARTIFACT]
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model = LCHModel.from_state(state)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        """Return P(high) (N,) of crops (N, S, S), in chunks of :data:`PREDICT_CHUNK`."""
        crops = np.asarray(model_input, dtype=np.float32)
        side = self.model.config.crop_size
        if crops.ndim != 3 or crops.shape[1:] != (side, side):
            raise ValueError(f"expected crops of shape (N, {side}, {side}), got {crops.shape}")
        x = torch.from_numpy(crops).unsqueeze(1)
        with torch.no_grad():
            p = [self.model(chunk) for chunk in x.split(PREDICT_CHUNK)] if len(x) else []
        return torch.cat(p).numpy() if p else np.zeros(0, np.float32)


mlflow.models.set_model(LCHPyfunc())
