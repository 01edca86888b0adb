"""The optional MLflow Model Registry mirror of a registry folder ($TUNEFORGE_REGISTRY_MLFLOW: an MLflow URI).

The folder stays the source of truth (serve reads its champion pointer); MLflow gets a copy that its users
and tools can read: one registered model per registry, one model version per tuneforge version (source: the
run directory, or on a tracking server a `runs:/` URI; tags: the tuneforge version and run directory, eval
numbers, fingerprints) and the aliases `champion` and `challenger` (the newest version above the champion,
as `serve.shadow: registry:NAME@challenger` reads it).

Each change is mirrored by `sync` before the folder changes: it makes MLflow match the state the folder is
about to have, and it is idempotent. So an MLflow failure leaves the folder as it was, and a partial sync (or
a folder write that fails after the mirror) is put right by the next change or `tuneforge registry sync`.
The switch is an environment variable, not a config key, because commands that read no config change the
registry (`tuneforge registry promote`); one variable set for all of them keeps every change mirrored.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneforge.errors import TuneforgeError

ENV = "TUNEFORGE_REGISTRY_MLFLOW"
VERSION_TAG = "tuneforge.version"
RUN_TAG = "tuneforge.run"
# A tracking server takes a local path as a version's source only inside a tracked run's artifacts (a security
# check), so there each version gets an MLflow run of its own in this experiment, tagged with the path.
SERVER_EXPERIMENT = "tuneforge-registry"
ALIASES = ("champion", "challenger")
CONNECT_TIMEOUT_S = 5.0
# MLflow tag keys: alphanumerics, '_', '-', '.', ' ', '/'; any other character of a split or metric name: '_'.
_TAG_KEY = re.compile(r"[^A-Za-z0-9_.\- /]")


def mirror_for(name: str) -> MlflowMirror | None:
    """The mirror of registry `name` when $TUNEFORGE_REGISTRY_MLFLOW is set, else None (nothing imported)."""
    uri = os.environ.get(ENV, "").strip()
    return MlflowMirror(uri, name) if uri else None


def version_tags(record: dict[str, Any]) -> dict[str, str]:
    """A version.json → MLflow model version tags (strings: MLflow keeps no other type)."""
    tags = {VERSION_TAG: str(record["version"]), RUN_TAG: str(record["run"])}
    for key in ("task", "base_model", "data_fingerprint", "config_fingerprint"):
        if record.get(key) is not None:
            tags[f"tuneforge.{key}"] = str(record[key])
    for split, metrics in (record.get("eval") or {}).items():
        for metric, value in metrics.items():
            tags[_TAG_KEY.sub("_", f"eval.{split}.{metric}")] = f"{value:.6g}"
    return tags


def challenger_of(versions: list[int], champion: int | None) -> int | None:
    """The newest version above the champion (any version when there is no champion), None if none is."""
    above = [v for v in versions if champion is None or v > champion]
    return max(above, default=None)


@dataclass(frozen=True)
class MlflowMirror:
    uri: str
    name: str

    def _fail(self, what: str, err: BaseException | str) -> TuneforgeError:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return TuneforgeError(
            f"{what}: {detail}",
            where=f"${ENV}={self.uri}",
            fix=f"the registry folder was not changed; make the MLflow store reachable and run the command "
            f"again, or unset {ENV} to use the folder registry alone",
        )

    def _reachable(self) -> None:
        """Refuse fast where MLflow would retry for minutes (a server that is down) or create a stray file."""
        parsed = urlparse(self.uri)
        if parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            try:
                socket.create_connection((parsed.hostname or "localhost", port), CONNECT_TIMEOUT_S).close()
            except OSError as err:
                raise self._fail("cannot reach the MLflow registry server", err) from None
        elif parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
            folder = Path(parsed.path[1:] if parsed.path.startswith("//") else parsed.path).parent
            if not folder.is_dir():
                raise self._fail("the MLflow SQLite store's folder does not exist", str(folder))

    def _client(self) -> Any:
        self._reachable()
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise TuneforgeError(
                f"{ENV} is set, but mlflow is not installed",
                where=f"${ENV}={self.uri}",
                fix=f"pip install 'tuneforge[mlflow]', or unset {ENV}",
            ) from None
        try:
            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            if not client.search_registered_models(filter_string=f"name = '{self.name}'"):
                client.create_registered_model(
                    self.name, description=f"mirrored from the tuneforge registry {self.name!r}"
                )
        except Exception as err:  # MLflow raises many types (store, HTTP, SQL): each means "not mirrored"
            raise self._fail("cannot open the MLflow model registry", err) from None
        return client

    def _source(self, client: Any, record: dict[str, Any]) -> tuple[str, str | None]:
        """(source, run_id) of a new model version: the run directory itself, except on a tracking server."""
        if urlparse(self.uri).scheme not in ("http", "https"):
            return str(record["run"]), None
        experiment = client.get_experiment_by_name(SERVER_EXPERIMENT)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(SERVER_EXPERIMENT)
        )
        run = client.create_run(
            experiment_id, run_name=f"{self.name}-v{record['version']}", tags=version_tags(record)
        )
        client.set_terminated(run.info.run_id)
        return f"runs:/{run.info.run_id}/final", run.info.run_id

    def sync(self, versions: list[dict[str, Any]], champion: int | None) -> dict[int, int]:
        """Make MLflow hold `versions` and point its aliases at `champion` (and its challenger).

        Returns tuneforge version → MLflow model version. MLflow numbers its versions itself, so a version is
        found by its `tuneforge.version` and `tuneforge.run` (the run directory) tags, never by number.
        """
        client = self._client()
        try:
            mirrored: dict[int, list[tuple[int, str | None]]] = {}
            for mv in client.search_model_versions(filter_string=f"name = '{self.name}'"):
                tags = mv.tags or {}
                if tags.get(VERSION_TAG, "").isdigit():
                    mirrored.setdefault(int(tags[VERSION_TAG]), []).append(
                        (int(mv.version), tags.get(RUN_TAG))
                    )
            numbers: dict[int, int] = {}
            for record in versions:
                n = int(record["version"])
                same = [v for v, run in mirrored.get(n, []) if run == record["run"]]
                if same:
                    numbers[n] = max(same)
                    continue
                source, run_id = self._source(client, record)
                mv = client.create_model_version(
                    self.name,
                    source=source,
                    run_id=run_id,
                    tags=version_tags(record),
                    description=record.get("reason"),
                )
                numbers[n] = int(mv.version)
            wanted = {"champion": champion, "challenger": challenger_of(list(numbers), champion)}
            current = {a: int(v) for a, v in client.get_registered_model(self.name).aliases.items()}
            for alias in ALIASES:
                version = wanted[alias]
                target = numbers.get(version) if version is not None else None
                if target is not None and current.get(alias) != target:
                    client.set_registered_model_alias(self.name, alias, str(target))
                elif target is None and alias in current:
                    client.delete_registered_model_alias(self.name, alias)
        except Exception as err:  # as above: whatever MLflow raised, the folder has not been touched yet
            raise self._fail("mirroring to the MLflow model registry failed", err) from None
        return numbers
