"""A local model registry: model package groups and versions as SageMaker's CreateModelPackage keeps them.

https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateModelPackage.html,
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DescribeModelPackage.html,
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateModelPackage.html:
a package of a group gets the next version (1, 2, ...) and an ARN
arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>; it keeps the request's inference
specification, model metrics, drift-check baselines and customer metadata; its approval status is
PendingManualApproval, Approved or Rejected, and changes only by an update. As a pipeline's RegisterModel
step does, registering into a group that does not exist creates the group.

The store is one JSON file (runs/local-aws/registry.json); the S3 objects packages name stay in the local S3
(runs/local-aws/s3/). `fraud-pipeline registry list | show | approve | reject` reads and updates it.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from pipelines.local.state import save_json

APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
LOCAL_ACCOUNT = "000000000000"
KEPT = (
    "ModelPackageGroupName",
    "ModelPackageDescription",
    "InferenceSpecification",
    "ModelMetrics",
    "DriftCheckBaselines",
    "CustomerMetadataProperties",
    "MetadataProperties",
    "Domain",
    "Task",
    "SamplePayloadUrl",
)
"""The CreateModelPackage request fields a package keeps."""


class RegistryError(ValueError):
    """A request the registry refuses (the message names the field), or an unknown group or version."""


class Registry:
    """The model package groups and their packages, kept in a JSON file."""

    def __init__(self, path: Path, region: str):
        self.path = path
        self.region = region
        self.groups: dict[str, dict] = json.loads(path.read_text())["groups"] if path.is_file() else {}

    def _save(self) -> None:
        save_json(self.path, {"groups": self.groups})

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{LOCAL_ACCOUNT}:{kind}/{name}"

    def create_model_package(self, request: dict, now: datetime.datetime) -> dict:
        """Register a version of the request's group; returns its DescribeModelPackage response."""
        group_name = request.get("ModelPackageGroupName")
        if not group_name:
            raise RegistryError("ModelPackageGroupName is required")
        status = request.get("ModelApprovalStatus", "PendingManualApproval")
        if status not in APPROVAL_STATUSES:
            raise RegistryError(f"ModelApprovalStatus {status!r} is not one of {', '.join(APPROVAL_STATUSES)}")
        containers = request.get("InferenceSpecification", {}).get("Containers") or []
        if not containers or not all(c.get("Image") for c in containers):
            raise RegistryError("InferenceSpecification.Containers: each container needs an Image")
        group = self.groups.setdefault(
            group_name,
            {"ModelPackageGroupArn": self._arn("model-package-group", group_name), "CreationTime": now.isoformat()},
        )
        packages = group.setdefault("packages", [])
        version = len(packages) + 1
        package = {field: request[field] for field in KEPT if field in request}
        package.update(
            ModelPackageVersion=version,
            ModelPackageArn=self._arn("model-package", f"{group_name}/{version}"),
            ModelPackageStatus="Completed",
            ModelApprovalStatus=status,
            CreationTime=now.isoformat(),
            LastModifiedTime=now.isoformat(),
        )
        packages.append(package)
        self._save()
        return dict(package)

    def packages(self, group: str) -> list[dict]:
        """The group's packages, oldest first (none when the group does not exist)."""
        return [dict(p) for p in self.groups.get(group, {}).get("packages", [])]

    def describe(self, group: str, version: int) -> dict:
        packages = self.packages(group)
        if not 1 <= version <= len(packages):
            known = f"versions 1 to {len(packages)}" if packages else "no versions"
            raise RegistryError(f"model package group {group} has no version {version} ({known})")
        return packages[version - 1]

    def update_approval(
        self, group: str, version: int, status: str, now: datetime.datetime, description: str = ""
    ) -> dict:
        """UpdateModelPackage's ModelApprovalStatus (and ApprovalDescription); the other fields stay."""
        if status not in APPROVAL_STATUSES:
            raise RegistryError(f"ModelApprovalStatus {status!r} is not one of {', '.join(APPROVAL_STATUSES)}")
        self.describe(group, version)
        package = self.groups[group]["packages"][version - 1]
        package.update(ModelApprovalStatus=status, LastModifiedTime=now.isoformat())
        if description:
            package["ApprovalDescription"] = description
        self._save()
        return dict(package)

    def latest_approved(self, group: str) -> dict | None:
        """The newest Approved package of the group (where ClarifyCheckStep finds its previous baseline)."""
        approved = [p for p in self.packages(group) if p["ModelApprovalStatus"] == "Approved"]
        return approved[-1] if approved else None
