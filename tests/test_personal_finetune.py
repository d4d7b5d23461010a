"""raysim.reproduce.personal_finetune: the fine-tuned personal accuracy, one code path for every
method, read from a run's last checkpoint."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from raysim.reproduce.personal_finetune import finetuned_personal_accuracy
from tests.conftest import tiny_config
from tests.helpers import run


# a client state (FedPer's head), a server-generated model (pFedHN), client buffers (FedBN)
@pytest.mark.parametrize("algo, model", [("fedper", "mlp"), ("pfedhn", "mlp"), ("fedbn", "cnn-bn")])
def test_without_fine_tuning_it_is_the_runs_own_personal_accuracy(tmp_path, algo, model):
    over = {"algorithm__name": algo, "model__name": model, "rounds__checkpoint_every": 3}
    d = run(tiny_config(tmp_path, **over)).run_dir
    last = pd.read_parquet(d / "rounds.parquet")["personal_accuracy"].dropna().iloc[-1]
    # epochs 0: the restored state scored by this module equals what the run scored at its end
    assert finetuned_personal_accuracy(d, epochs=0) == last
    tuned = finetuned_personal_accuracy(d, epochs=1)
    assert 0 <= tuned <= 1 and tuned != last  # a fine-tuning step changes the models
    assert json.loads((d / "finetuned_e1.json").read_text())["personal_accuracy"] == tuned  # cached


def test_a_run_without_a_checkpoint_is_refused_by_name(tmp_path):
    d = run(tiny_config(tmp_path)).run_dir
    with pytest.raises(RuntimeError, match="no checkpoint to fine-tune from"):
        finetuned_personal_accuracy(d)
