"""What local runs keep between them, under runs/local-aws/: the local S3's objects, the model registry, the
step cache (and the Feature Store's records). One run at a time may use it.

The local S3 is moto's S3 server, in memory while a run lasts. At the end of a run its objects are saved
under s3/<bucket>/<key>; at the start of the next, the objects that the step cache and the registry name
(step outputs a cache hit hands on, registered models and their reports) are put back.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def save_json(path: Path, document) -> None:
    """Write a state file whole or not at all (a scratch file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    scratch.replace(path)


class StateBusy(RuntimeError):
    """Another local run holds the state folder."""


class LocalState:
    """The runs/local-aws/ folder."""

    def __init__(self, root: Path):
        self.root = root
        self.s3_dir = root / "s3"
        self.index_path = self.s3_dir / ".index.json"
        self.registry_path = root / "registry.json"
        self.cache_path = root / "cache.json"
        self.feature_store_path = root / "feature-store.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for one run; StateBusy when another run holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateBusy(f"{self.root} is in use by another local run; wait for it to end") from None
            yield

    def _index(self) -> dict[str, str]:
        return json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def referenced(self, bucket: str) -> set[str]:
        """The keys (or key prefixes) of `bucket` that the registry and the step cache name."""
        text = "".join(p.read_text() for p in (self.registry_path, self.cache_path) if p.is_file())
        return set(re.findall(rf"s3://{re.escape(bucket)}/([^\"\s]+)", text))

    def restore(self, s3, bucket: str) -> int:
        """Put the saved objects the registry and the cache name back into the local S3; returns how many."""
        saved = self.s3_dir / bucket
        index, restored = self._index(), 0
        for reference in sorted(self.referenced(bucket)):
            path = saved / reference
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                key = file.relative_to(saved).as_posix()
                s3.upload_file(str(file), bucket, key)
                index[f"{bucket}/{key}"] = s3.head_object(Bucket=bucket, Key=key)["ETag"]
                restored += 1
        self._write_index(index)
        return restored

    def save(self, s3, bucket: str) -> int:
        """Save the local S3's new and changed objects; returns how many."""
        index, saved = self._index(), 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                name = f"{bucket}/{item['Key']}"
                if index.get(name) == item["ETag"]:
                    continue
                path = self.s3_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(path))
                index[name] = item["ETag"]
                saved += 1
        self._write_index(index)
        return saved

    def _write_index(self, index: dict[str, str]) -> None:
        save_json(self.index_path, index)

    def saved_object(self, uri: str) -> Path:
        """Where a saved S3 object lies on disk (s3://bucket/key -> runs/local-aws/s3/bucket/key)."""
        return self.s3_dir / uri.removeprefix("s3://")
