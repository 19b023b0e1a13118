"""The promotion gate and a moving alias on a team MLflow tracking server over HTTP (`mlflow
server`, SQLite backend, proxied artifacts): a Serve replica's model source follows the alias
through the server, and nothing lands in the embedded store under ``LCH_HOME``.

Training through the server is checked in test_train.py (the same-seed run).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lch.paths import cohort_dir
from lch.promotion import PromotionRefused, promote
from lch.registry import REGISTERED_MODEL, log_lch_model
from lch.serving.model_source import ModelSource

from helpers import TINY_CROP, assert_nothing_local, tiny_model

CROP = TINY_CROP


def p_high(model, crops: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(crops).numpy()


def test_the_promotion_gate_and_a_moving_alias_over_http(remote_tracking, tmp_path):
    url, _, home = remote_tracking
    better = log_lch_model(tiny_model(1, CROP), cohorts=["x"], population_accuracy=0.95)
    worse = log_lch_model(tiny_model(2, CROP), cohorts=["x"], population_accuracy=0.90)
    # Forced: this test does not depend on which version an earlier test promoted.
    promote(better, alias="staging", force=True)
    source = ModelSource("staging", url)
    assert source.current.version == better and not source.refresh()

    with pytest.raises(PromotionRefused, match=r"0\.900, below 0\.950"):
        promote(worse, alias="staging")
    assert MlflowClient(url).get_model_version_by_alias(REGISTERED_MODEL, "staging").version \
        == better
    promote(worse, alias="staging", force=True)
    assert source.refresh() and source.current.version == worse
    tags = MlflowClient(url).get_model_version(REGISTERED_MODEL, worse).tags
    assert tags["promoted_to_staging_from"] == better
    assert tags["promoted_to_staging_forced"] == "true"
    crops = torch.zeros(2, 1, CROP, CROP)
    np.testing.assert_allclose(p_high(source.current.model, crops),
                               p_high(tiny_model(2, CROP), crops), atol=1e-6)
    assert not cohort_dir("x").exists()
    assert_nothing_local(home, tmp_path)
