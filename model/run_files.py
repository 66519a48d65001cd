"""The files a run leaves beside its checkpoints for others to read, named once (no torch).

After a recovery (``health.on_failure: recover``, :mod:`model.recovery`) a run writes, next to
``last.pt``, :data:`EFFECTIVE_CONFIG_FILE` (the configuration with every recovery's changes: what
a restart with the fix would train) and :data:`RECOVERIES_FILE` (the recovery events, oldest
first: with the configuration the run started from they reproduce it). Production training's
:class:`model.callbacks.Checkpointing` and a search trial (``hpo/trainable.py``) write them; the
search logs them as the trial's artifacts (``hpo/layout.py``) and the export reads them back.

Also named here, for the same two writers (a search's trials and production training log to MLflow
alike): the MLflow tags they share (role, outcome, diagnosis, the health monitor's message, the
run's description) and the experiment tag that makes MLflow 3's UI open an experiment in its
model-training view. ``hpo/layout.py`` re-exports them with the search's own tags.
"""

from __future__ import annotations

EFFECTIVE_CONFIG_FILE = "effective_config.yaml"  #: the config in force after the recoveries (a TrainConfig in YAML)
RECOVERIES_FILE = "recoveries.json"  #: the recovery events, a JSON list (``model.recovery``: diagnosis, snapshot, changes)
#: MLflow 3's UI opens an experiment in its GenAI view (traces, an assistant) unless this tag says
#: otherwise; MLflow's Python package has no constant for it (3.17: only its UI bundle spells it).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"  #: the tag's value for the UI's "Machine learning" view (the runs table)
#: A run's MLflow tags: its role (a search's ``parent`` or ``trial``, or ``production``), how it
#: ended, the health monitor's latest diagnosis and, when it had one, its message with the evidence.
ROLE_TAG, OUTCOME_TAG, DIAGNOSIS_TAG = "hpo.role", "hpo.outcome", "hpo.diagnosis"
HEALTH_MESSAGE_TAG = "hpo.health_message"
DESCRIPTION_TAG = "mlflow.note.content"  #: MLflow's own: the run page's description
PRODUCTION_ROLE = "production"  #: the role of a run of ``python -m model.train``


def run_description(headline: str, health_message: str = "", recovery: str = "") -> str:
    """A run's description (:data:`DESCRIPTION_TAG`): how it ended, the health monitor's message
    with its evidence and the latest recovery, one paragraph each."""
    lines = [headline]
    if health_message:
        lines.append(f"Health monitor: {health_message}")
    if recovery:
        lines.append(f"Last recovery {recovery}")
    return "\n\n".join(lines)
