"""The single-table design of the catalogue (DynamoDB, on demand) and the event names.

Every key the package writes is built here, so the layout is documented in one place:

==============================  ====================  ===============================================
pk                              sk                    what
==============================  ====================  ===============================================
``OBJ#<key>``                   ``META``              one image record per S3 key (see ImageStatus)
``HASH#<sha256>``               ``OWNERS``            which keys/labels hold these bytes (dup/conflict)
``LABEL#<label>``               ``COUNTS``            atomic per-label counters (accepted, rejected ...)
``STATE``                       ``DATASET``           accepted_seq, baseline_seq, fired_baseline
``LOCK``                        ``TRAINING``          single-flight lock + pending trigger
``RUN#<run_id>``                ``RUN``               one training run (gsi1: ``RUNS`` / created_at)
``DATASET#<dataset_id>``        ``DATASET``           a frozen dataset snapshot (counts, S3 prefix)
``JOB#<job_name>``              ``RUN``               training job name -> run_id pointer
``MODEL#<model_id>``            ``MODEL``             model registry entry (gsi1: ``MODELS`` / created)
``MODEL#<model_id>``            ``DEPLOY#<target>#..``  deployments of that model
``CHAMPION``                    ``MODEL``             pointer to the current champion model
==============================  ====================  ===============================================

GSI ``gsi1`` (gsi1pk, gsi1sk): image records by status (``STATUS#<status>`` / ``<label>#<key>``, the key
cut and hashed past 1,024 bytes), runs (``RUNS`` / created_at) and models (``MODELS`` / created_at).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

EVENT_SOURCE = "trashsorter"
DATASET_READY = "Dataset Ready"
SAGEMAKER_SOURCE = "aws.sagemaker"
TRAINING_STATE_CHANGE = "SageMaker Training Job State Change"
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


class ModelStatus(StrEnum):
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"
    # Passed the gate, registered, not yet promoted (only between two steps of the package function).
    CANDIDATE = "candidate"


def image_key(object_key: str) -> dict[str, str]:
    return {"pk": f"OBJ#{object_key}", "sk": "META"}


MAX_SORT_KEY_BYTES = 1024  # DynamoDB's limit for a sort key, in the table and in an index


def image_gsi(status: str, label: str, object_key: str) -> dict[str, str]:
    """``<label>#<key>``; when that exceeds 1,024 bytes (S3 keys may be 1,024 bytes themselves) the key is
    cut and ends in ``#<sha256 of the key>`` instead: the index stays ordered by label and key prefix, and
    the record's ``key`` attribute keeps the whole key (index sort keys need not be unique)."""
    sort_key = f"{label}#{object_key}"
    if len(sort_key.encode("utf-8")) > MAX_SORT_KEY_BYTES:
        digest = hashlib.sha256(object_key.encode("utf-8")).hexdigest()
        room = MAX_SORT_KEY_BYTES - len(digest) - 1
        head = sort_key.encode("utf-8")[:room].decode("utf-8", errors="ignore")
        sort_key = f"{head}#{digest}"
    return {"gsi1pk": f"STATUS#{status}", "gsi1sk": sort_key}


def hash_key(sha256: str) -> dict[str, str]:
    return {"pk": f"HASH#{sha256}", "sk": "OWNERS"}


def label_counts_key(label: str) -> dict[str, str]:
    return {"pk": f"LABEL#{label}", "sk": "COUNTS"}


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


def model_key(model_id: str) -> dict[str, str]:
    return {"pk": f"MODEL#{model_id}", "sk": "MODEL"}


def deployment_key(model_id: str, target: str, request_id: str) -> dict[str, str]:
    """One deployment of a model to a target (``greengrass-v1``, ``greengrass-v2``, ``local-device``)."""
    return {"pk": f"MODEL#{model_id}", "sk": f"DEPLOY#{target}#{request_id}"}


def edge_component_key(component_name: str) -> dict[str, str]:
    """Monotonic version counter of the Greengrass v2 component (``1.0.<seq>``)."""
    return {"pk": "EDGE", "sk": f"COMPONENT#{component_name}"}
