"""The AWS clients one domain call uses, bundled: ``Clients(ddb=..., s3=...)``.

A client not given falls back, when first used, to the shared default of :func:`trashsorter.aws.client`
(so a Lambda passes nothing and a test injects only the clients it points at moto or a Stubber).
"""

from __future__ import annotations

from typing import Any, ClassVar

from trashsorter import aws


class Clients:
    """Injectable AWS clients with lazy shared defaults (boto3 clients are untyped, hence ``Any``)."""

    __slots__ = ("_given",)

    _SERVICES: ClassVar[dict[str, str]] = {
        "ddb": "dynamodb",
        "s3": "s3",
        "sagemaker": "sagemaker",
        "greengrass": "greengrass",
        "greengrassv2": "greengrassv2",
        "sns": "sns",
        "events": "events",
    }

    def __init__(
        self,
        *,
        ddb: Any = None,
        s3: Any = None,
        sagemaker: Any = None,
        greengrass: Any = None,
        greengrassv2: Any = None,
        sns: Any = None,
        events: Any = None,
    ) -> None:
        given = {
            "ddb": ddb,
            "s3": s3,
            "sagemaker": sagemaker,
            "greengrass": greengrass,
            "greengrassv2": greengrassv2,
            "sns": sns,
            "events": events,
        }
        self._given = {name: client for name, client in given.items() if client is not None}

    def _get(self, name: str) -> Any:
        found = self._given.get(name)
        return found if found is not None else aws.client(self._SERVICES[name])

    @property
    def ddb(self) -> Any:
        return self._get("ddb")

    @property
    def s3(self) -> Any:
        return self._get("s3")

    @property
    def sagemaker(self) -> Any:
        return self._get("sagemaker")

    @property
    def greengrass(self) -> Any:
        return self._get("greengrass")

    @property
    def greengrassv2(self) -> Any:
        return self._get("greengrassv2")

    @property
    def sns(self) -> Any:
        return self._get("sns")

    @property
    def events(self) -> Any:
        return self._get("events")
