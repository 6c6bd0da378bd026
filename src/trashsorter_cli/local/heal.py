"""After the local stack restored its state (:mod:`persistence`): heal what a stop or crash lost, and make the
device serve the champion the restored registry names.

What the state does not keep, and how it heals (docs/local-mode.md, "State"):

* **Queued S3 events** (SQS lives in memory): an upload acknowledged just before a crash may never have
  been ingested, a delete never applied. :func:`catalogue_drift` compares the restored current versions under
  ``images/`` with the catalogue and hands only the difference to ingest (the same ``process`` the ingest
  function and ``trashsorter reindex`` run), so a restart of a 10,000-image stack re-ingests nothing that
  was already catalogued.
* **Running training jobs** (the emulated SageMaker job is a child of the stack and dies with it): a run
  the restored lock names as active has a job SageMaker no longer knows; :func:`fail_lost_run` fails it with
  the reconciler's own :func:`trashsorter.reconcile.fail_run` (lock released, pending dataset re-published,
  notice sent), so training is never blocked by a run cut off by ``kill -9``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from trashsorter import ingest, lifecycle, reconcile, registry, runs
from trashsorter.catalogue import Catalogue
from trashsorter.clients import Clients
from trashsorter.events import S3ObjectEvent
from trashsorter.keys import is_images_key
from trashsorter.lifecycle import HealAction
from trashsorter.schema import ImageStatus
from trashsorter.settings import IngestSettings, PackageSettings, TrainingSettings

LOG = logging.getLogger("trashsorter.local.heal")
ClientFactory = Callable[[str], Any]
INGEST_FUNCTION = "IngestFunction"
TRAINING_FUNCTION = "StartTrainingFunction"
PACKAGE_FUNCTION = "PackageFunction"


def catalogue_drift(
    settings: IngestSettings, clients: Clients, live: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """Ingest the objects whose current version the catalogue does not hold, and the deletes it missed.

    ``live``: key -> its current version (``VersionId``, ``ETag``, ``Size``) for every key of the images
    bucket that is not deleted, as the restore put them back (the same as ``ListObjectVersions`` ``IsLatest``
    would list, without reading 10,000 versions back through the endpoint).
    """
    bucket = settings.images_bucket
    live = {key: version for key, version in live.items() if is_images_key(key)}
    records = {str(r["key"]): r for r in Catalogue(settings.table_name, ddb=clients.ddb).iter_images()}
    batch: list[S3ObjectEvent] = []
    for key, version in live.items():
        rec = records.get(key)
        version_id = str(version.get("VersionId") or "") or None
        if (
            rec is not None
            and rec.get("status") != ImageStatus.DELETED
            and rec.get("version_id") == version_id
        ):
            continue
        etag, size = str(version.get("ETag", "")).strip('"') or None, int(version.get("Size", 0) or 0)
        batch.append(
            S3ObjectEvent("ObjectCreated:Put", bucket, key, version_id=version_id, etag=etag, size=size)
        )
    for key, rec in records.items():
        if key not in live and rec.get("status") != ImageStatus.DELETED:
            batch.append(S3ObjectEvent("ObjectRemoved:Delete", bucket, key))
    ingest.process_s3_events(batch, settings, s3=clients.s3, ddb=clients.ddb, events=clients.events)
    created = sum(1 for event in batch if event.created)
    return {"checked": len(live), "ingested": created, "removed": len(batch) - created}


def fail_lost_run(settings: TrainingSettings, clients: Clients) -> reconcile.ReconcileOutcome | None:
    """Fail the active run whose job SageMaker (the stack's emulator, in memory) no longer knows."""
    holder = str(runs.get_lock(settings, ddb=clients.ddb).get("holder") or "")
    run = runs.get_run(settings, holder, ddb=clients.ddb) if holder else None
    if run is None or not lifecycle.is_active(run):
        return None
    job_name = str(run.get("job_name") or "")
    known = bool(job_name) and bool(reconcile.describe_job(job_name, clients.sagemaker))
    if lifecycle.heal_action(run, job_known=known) != HealAction.FAIL:
        return None  # SageMaker knows it: its own state change ends it
    reason = (
        f"the local stack stopped while this run was {run.get('status')}; its training job "
        f"{job_name or '(not started)'} did not survive the restart"
    )
    return reconcile.fail_run(settings, str(run["run_id"]), job_name, reason, clients)


def after_restore(
    environments: Mapping[str, Mapping[str, str]],
    *,
    live: Mapping[str, Mapping[str, Mapping[str, Any]]],
    client: ClientFactory,
) -> dict[str, Any]:
    """Both heals, with the functions' own settings (``live``: bucket -> key -> current version, from the
    restore); returns what was done (for logs and tests)."""
    clients = Clients(
        s3=client("s3"), ddb=client("dynamodb"), events=client("events"), sagemaker=client("sagemaker"),
        sns=client("sns"),
    )  # fmt: skip
    settings = IngestSettings.from_env(dict(environments[INGEST_FUNCTION]))
    drift = catalogue_drift(settings, clients, live.get(settings.images_bucket, {}))
    lost = fail_lost_run(TrainingSettings.from_env(dict(environments[TRAINING_FUNCTION])), clients)
    healed: dict[str, Any] = {"catalogue": drift, "lost_run": lost.as_dict() if lost else None}
    if drift["ingested"] or drift["removed"] or lost:
        LOG.warning("healed after restore: %s", healed)
    return healed


def _champion(
    package_env: Mapping[str, str], client: ClientFactory
) -> tuple[PackageSettings, dict[str, Any] | None]:
    """The package function's settings and the champion its registry names (``None``: none yet)."""
    settings = PackageSettings.from_env(dict(package_env))
    return settings, registry.get_champion(table_name=settings.table_name, ddb=client("dynamodb"))


def champion_id(package_env: Mapping[str, str], *, client: ClientFactory) -> str | None:
    _, champion = _champion(package_env, client)
    return str(champion["model_id"]) if champion else None


def serve_champion(device: Any, package_env: Mapping[str, str], *, client: ClientFactory) -> str | None:
    """Deploy the registry's champion to the local core device unless it serves it, through the same
    Greengrass v2 path as the package step (a new component version, a new revision of the thing group's
    restored deployment). Returns the model deployed."""
    from trashsorter.deploy import greengrass_v2
    from trashsorter.deploy.orchestrate import component_versions

    settings, champion = _champion(package_env, client)
    if champion is None or device.model_id == champion["model_id"]:
        return None
    uris = champion.get("packaged_artifact_uris") or {}
    if not uris.get("onnx") or not uris.get("edge_app") or not settings.edge_thing_group_arn:
        LOG.warning(
            "champion %s has no Greengrass v2 component: the device serves nothing", champion["model_id"]
        )
        return None
    model_id = str(champion["model_id"])
    clients = Clients(ddb=client("dynamodb"), s3=client("s3"))
    version, app_version = component_versions(settings, clients, str(uris["edge_app"]))
    greengrass_v2.deploy(
        model_id=model_id,
        artifact_uri=str(uris["onnx"]),
        app_uri=str(uris["edge_app"]),
        version=version,
        app_version=app_version,
        settings=settings,
        greengrassv2=client("greengrassv2"),
    )
    return model_id
