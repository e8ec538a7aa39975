"""MLflow tracking: the only module that imports mlflow.

The embedded default is a SQLite store in the working directory (``sqlite:///mlflow.db``); a
remote server works by its URI. Every call is guarded: if the tracking server cannot be reached
(or fails later), training goes on with one warning, metrics keep being written to a local
``metrics.jsonl`` beside the run's checkpoints, and nothing is lost.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from .lifeline import guarded

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Fail fast against an unreachable server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def default_uri(directory: str | os.PathLike[str] = ".") -> str:
    return f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Dotted keys and string values of a nested structure (MLflow parameters)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, (list, tuple)) and not all(isinstance(x, (int, float, str, bool)) for x in data):
        for i, v in enumerate(data):
            yield from flatten(v, f"{prefix}.{i}")  # MLflow keys allow no brackets
    else:
        yield prefix, str(data)[:6000]


def reachable(uri: str, timeout: float = 3.0) -> bool:
    """For HTTP URIs, whether the server answers its health check; other URIs count as reachable."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing. Processes that start at once on a new
    experiment race to create it; the loser finds the winner's instead of failing (or logging to
    "Default")."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class NullTracker:
    """What the ranks other than 0 of a distributed job log: nothing (rank 0 logs the job's run)."""

    enabled = False

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def __getattr__(self, name: str) -> Any:
        if name.startswith("log_") or name == "end":
            return lambda *args, **kwargs: None
        raise AttributeError(name)


class Tracker:
    """An MLflow run that degrades to local files when the server is unavailable."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, local_dir: Path, run_id: str | None = None):
        self.uri = uri or default_uri()
        self.local_dir = Path(local_dir)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self.run_id: str | None = None
        self.enabled = False
        self._warned = False
        if not reachable(self.uri):
            self._disable(f"tracking server {self.uri} is unreachable")
            return
        self._guard(self._start, experiment, run_name, run_id)

    def _start(self, experiment: str, run_name: str, run_id: str | None) -> None:
        # The client API with an explicit run id: no global "active run" leaks between trackers.
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        tags = None
        if run_id is not None and not self._exists(run_id):
            # A checkpoint resumed against another tracking store (copied from another machine, or
            # a new mlflow.db): its run goes on as a new MLflow run that names the old one.
            warnings.warn(f"MLflow run {run_id} is not in {self.uri}; continuing in a new run (tag "
                          "lhopt.resumed_from names the old one)", stacklevel=3)  # fmt: skip
            tags, run_id = {"lhopt.resumed_from": run_id}, None
        if run_id is None:
            exp_id = ensure_experiment(self.client, experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.enabled = True

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _disable(self, why: str) -> None:
        self.enabled = False
        if not self._warned:
            warnings.warn(
                f"MLflow tracking disabled: {why}. The run goes on; metrics are kept in "
                f"{self.local_dir / 'metrics.jsonl'} and files in {self.local_dir}.",
                stacklevel=3,
            )
            self._warned = True

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any tracking failure must not stop training
            self._disable(f"{type(e).__name__}: {e}")
            return None

    # --- logging -------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        flat = dict(flatten(params))
        (self.local_dir / "params.json").write_text(json.dumps(flat, indent=1))
        if self.enabled:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                self._guard(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int, local_file: str = "metrics.jsonl") -> None:
        """Log to MLflow (if reachable) and append a row to ``local_dir/local_file``."""
        with open(self.local_dir / local_file, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.enabled:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
            self._guard(self.client.log_batch, self.run_id, metrics=rows)

    def keep_metrics_through(self, step: int) -> int:
        """Drop the rows of the local ``metrics.jsonl`` past ``step`` (and any torn line); how many.

        A run writes an iteration's row, then its checkpoint; killed between the two, the file holds
        a row the checkpoint does not, and the resumed run would write that iteration again. Called
        with the checkpoint's iteration when a run starts (0 for a new one), the file describes
        exactly the run whose checkpoint lies beside it. The rewrite is atomic."""
        path = self.local_dir / "metrics.jsonl"
        if not path.exists():
            return 0
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                keep = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
            except json.JSONDecodeError:
                keep = False
            if keep:
                kept.append(line + "\n")
            elif line.strip():
                dropped += 1
        if dropped:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)
        return dropped

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if self.enabled:
            self._guard(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        path = self.local_dir / name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        self.log_artifact(path, "plots")

    def log_policy(self, checkpoint: Path, registered_name: str | None) -> None:
        """Log the policy as an MLflow (pyfunc) model and register it under ``registered_name``."""
        if not self.enabled:
            return

        def log() -> None:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            # The wrapper class is pickled by reference to runners.tracking (importable wherever lhopt is
            # installed), so MLflow's generic warning about pickled Python objects does not apply.
            pyfunc_log = logging.getLogger("mlflow.pyfunc")
            level = pyfunc_log.level
            pyfunc_log.setLevel(logging.ERROR)
            try:
                with mlflow.start_run(run_id=self.run_id):
                    mlflow.pyfunc.log_model(
                        name="policy",
                        python_model=PolicyModel(),
                        artifacts={"checkpoint": str(checkpoint)},
                        pip_requirements=["torch", "numpy", "lhopt"],
                        registered_model_name=registered_name,
                    )
            finally:
                pyfunc_log.setLevel(level)

        self._guard(log)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._guard(self.client.set_terminated, self.run_id, status)


def _pyfunc_base() -> type:
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class PolicyModel(_pyfunc_base()):  # type: ignore[misc]
    """Pyfunc wrapper: ``predict`` maps rows of policy features to greedy actions.

    For training loops, load the checkpoint with :func:`load_policy_uri` and use
    ``lhopt_dsl.controller`` instead; this wrapper makes the model browsable and servable.
    """

    _skip_type_hint_validation = True  # predict takes arrays; no MLflow schema (and no warning about it)

    def load_context(self, context: Any) -> None:
        from lhopt_dsl.controller import load_policy

        policy, _ = load_policy(context.artifacts["checkpoint"])
        # a residual policy's actions are its offsets from its base schedule (the drop-in carries them out);
        # a level rule's wrapper replaces the network's learning-rate proposals during a run, so rows get the network's own
        while hasattr(policy, "inner"):
            policy = policy.inner
        self.policy = policy

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import numpy as np
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        x = self.policy.policy_norm(x, update=False)
        logits, _ = self.policy.actor_forward(torch.as_tensor(x).unsqueeze(1))
        return np.stack([d.probs.argmax(-1).numpy() for d in self.policy.dists(logits[:, 0])], axis=-1)


def load_policy_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """Download an MLflow model URI (e.g. ``models:/name/1``) and return its policy checkpoint path."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri or default_uri())
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"no policy checkpoint (*.pt) inside the MLflow model {uri}")
    return found[0]


def ui_command(backend_uri: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The lean MLflow server: one worker, no job execution (starts in seconds, not 15 processes)."""
    return [
        sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", host, "--port", str(port),
        "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts,
    ]  # fmt: skip


_GROUPS = hasattr(os, "killpg")  # POSIX: the server gets its own process group


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or someone else's process took the id
        return False
    return True


def _wait_group(pgid: int, until: float) -> None:
    """Wait until process group ``pgid`` is empty or the monotonic clock passes ``until``."""
    while _GROUPS and _group_alive(pgid) and time.monotonic() < until:
        time.sleep(0.05)


class UIServer(subprocess.Popen):
    """The MLflow server, started in a session (and process group) of its own.

    ``mlflow server`` forks a uvicorn worker, so signalling only the process we started can leave
    the worker holding the port. Here ``send_signal``/``terminate``/``kill`` reach the whole group,
    and ``stop`` ends it for sure: SIGTERM, a grace period, then SIGKILL.
    """

    def __init__(self, args: list[str], **kwargs: Any):
        # under the supervisor of runners/lifeline.py: the group goes down with lhopt ui even on SIGKILL
        super().__init__(guarded(args), start_new_session=_GROUPS, **kwargs)

    def send_signal(self, sig: int) -> None:
        if not _GROUPS:
            return super().send_signal(sig)
        try:  # the group id is the leader's pid; it stays reserved while any member lives
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):  # the whole group is gone already
            pass

    def stop(self, grace: float = 5.0) -> int:
        """Take the server and everything it started down; the leader's exit status."""
        deadline = time.monotonic() + grace
        self.terminate()
        try:
            self.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _wait_group(self.pid, deadline)
        if self.poll() is None or (_GROUPS and _group_alive(self.pid)):
            self.kill()
            self.wait()
            _wait_group(self.pid, time.monotonic() + 2.0)
        return self.wait()  # reaped already: just the status


def start_ui(backend_uri: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000) -> UIServer:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return UIServer(ui_command(backend_uri, artifacts, host, port), env=env)
