"""The single-table design of the catalogue (DynamoDB, on demand) and the event names.

Every key the package writes is built here, so the layout is documented in one place:

==============================  ====================  ===============================================
pk                              sk                    what
==============================  ====================  ===============================================
``OBJ#<key>``                   ``META``              one image record per S3 key (see ImageStatus)
``HASH#<sha256>``               ``OWNERS``            which keys/labels hold these bytes (dup/conflict)
``LABEL#<label>``               ``COUNTS``            atomic per-label counters (accepted, rejected ...)
``STATE``                       ``DATASET``           accepted_seq/_at, baseline_seq, fired_baseline
``LOCK``                        ``TRAINING``          single-flight lock + pending trigger
``RUN#<run_id>``                ``RUN``               one training run (gsi1: ``RUNS`` / created_at)
``DATASET#<dataset_id>``        ``DATASET``           a frozen dataset snapshot (counts, S3 prefix)
``JOB#<job_name>``              ``RUN``               training job name -> run_id pointer
``MODEL#<model_id>``            ``MODEL``             model registry entry (gsi1: ``MODELS`` / created)
``MODEL#<model_id>``            ``DEPLOY#<t>#<req>``  one deployment request of that model to target t
``CHAMPION``                    ``MODEL``             pointer to the current champion model
``EDGE``                        ``COMPONENT#<name>``  Greengrass v2 component version counter
==============================  ====================  ===============================================

GSI ``gsi1`` (gsi1pk, gsi1sk): image records by status (``STATUS#<status>`` / ``<label>#<key>``, the key
cut and hashed past 1,024 bytes), runs (``RUNS`` / created_at) and models (``MODELS`` / created_at).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum

from trashsorter_edge.contract import DATASETS_PREFIX

EVENT_SOURCE = "trashsorter"
DATASET_READY = "Dataset Ready"
SAGEMAKER_SOURCE = "aws.sagemaker"
TRAINING_STATE_CHANGE = "SageMaker Training Job State Change"
TRAINING_RECONCILED = "Training Job Reconciled"  # a lost state change, re-published (trashsorter.reconcile)
RECONCILE_TRAINING = "Reconcile Training"  # the scheduled check's event (start-training function)
JOB_PREFIX = "deeplens-"  # DeepLens model import requires it


class ImageStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    DELETED = "deleted"


COUNTED_STATUSES = tuple(ImageStatus)


class RunStatus(StrEnum):
    STARTING = "starting"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    BLOCKED = "blocked"


ACTIVE_RUN_STATUSES = (RunStatus.STARTING, RunStatus.IN_PROGRESS)
FINAL_RUN_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.BLOCKED)


class ModelStatus(StrEnum):
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"
    # Passed the gate, registered, not yet promoted (only between two steps of the package function).
    CANDIDATE = "candidate"


def image_key(object_key: str) -> dict[str, str]:
    return {"pk": f"OBJ#{object_key}", "sk": "META"}


def image_gsi_status(status: str) -> str:
    """``gsi1pk`` of the image records in ``status``."""
    return f"STATUS#{status}"


def image_gsi_label_prefix(label: str) -> str:
    """``gsi1sk`` prefix of the image records of ``label`` (``begins_with``)."""
    return f"{label}#"


MAX_SORT_KEY_BYTES = 1024  # DynamoDB's limit for a sort key, in the table and in an index


def image_gsi(status: str, label: str, object_key: str) -> dict[str, str]:
    """``<label>#<key>``; when that exceeds 1,024 bytes (S3 keys may be 1,024 bytes themselves) the key is
    cut and ends in ``#<sha256 of the key>`` instead: the index stays ordered by label and key prefix, and
    the record's ``key`` attribute keeps the whole key (index sort keys need not be unique)."""
    sort_key = image_gsi_label_prefix(label) + object_key
    if len(sort_key.encode("utf-8")) > MAX_SORT_KEY_BYTES:
        digest = hashlib.sha256(object_key.encode("utf-8")).hexdigest()
        room = MAX_SORT_KEY_BYTES - len(digest) - 1
        head = sort_key.encode("utf-8")[:room].decode("utf-8", errors="ignore")
        sort_key = f"{head}#{digest}"
    return {"gsi1pk": image_gsi_status(status), "gsi1sk": sort_key}


def hash_key(sha256: str) -> dict[str, str]:
    return {"pk": f"HASH#{sha256}", "sk": "OWNERS"}


def label_counts_key(label: str) -> dict[str, str]:
    return {"pk": f"LABEL#{label}", "sk": "COUNTS"}


def label_from_counts_key(item: Mapping[str, object]) -> str:
    """The label of a ``LABEL#<label>/COUNTS`` item (inverse of :func:`label_counts_key`)."""
    return str(item["pk"]).removeprefix("LABEL#")


GSI = "gsi1"
RUNS_GSI_PK = "RUNS"  # gsi1pk of run records (gsi1sk: created_at)
MODELS_GSI_PK = "MODELS"  # gsi1pk of model records (gsi1sk: created_at)

STATE_KEY = {"pk": "STATE", "sk": "DATASET"}
LOCK_KEY = {"pk": "LOCK", "sk": "TRAINING"}
CHAMPION_KEY = {"pk": "CHAMPION", "sk": "MODEL"}


def run_key(run_id: str) -> dict[str, str]:
    return {"pk": f"RUN#{run_id}", "sk": "RUN"}


def job_key(job_name: str) -> dict[str, str]:
    """``JOB#<training job name>/RUN``: pointer to the run (``run_id``) that owns a training job."""
    return {"pk": f"JOB#{job_name}", "sk": "RUN"}


def dataset_key(dataset_id: str) -> dict[str, str]:
    return {"pk": f"DATASET#{dataset_id}", "sk": "DATASET"}


def dataset_prefix(dataset_id: str) -> str:
    """S3 (images bucket): the folder of one snapshot's files."""
    return f"{DATASETS_PREFIX}{dataset_id}/"


def dataset_manifest_key(dataset_id: str) -> str:
    """S3 (images bucket): the snapshot's ``manifest.jsonl``, written last (its presence = complete)."""
    return dataset_prefix(dataset_id) + "manifest.jsonl"


def model_key(model_id: str) -> dict[str, str]:
    return {"pk": f"MODEL#{model_id}", "sk": "MODEL"}


DEPLOY_SK_PREFIX = "DEPLOY#"


def deployment_key(model_id: str, target: str, request_id: str) -> dict[str, str]:
    """One deployment of a model to a target (``greengrass-v1``, ``greengrass-v2``, ``local-device``)."""
    return {"pk": model_key(model_id)["pk"], "sk": f"{DEPLOY_SK_PREFIX}{target}#{request_id}"}


def edge_component_key(component_name: str) -> dict[str, str]:
    """Monotonic version counter of the Greengrass v2 component (``1.0.<seq>``)."""
    return {"pk": "EDGE", "sk": f"COMPONENT#{component_name}"}
