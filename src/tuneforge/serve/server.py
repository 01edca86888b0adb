"""`tuneforge serve`: check everything cheap, bind the port, load the models, serve until SIGTERM.

On SIGTERM uvicorn stops accepting, in-flight requests get `serve.shutdown_grace_s` to finish, then the
request log is flushed and the process exits 0 (uvicorn would re-raise the signal and die of it: `_Server`).
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from types import FrameType
from typing import Any

from tuneforge.config import ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.registry import Registry
from tuneforge.serve.engine import ServedModel, resolve_targets
from tuneforge.serve.keys import KeyChecker, KeyFile

LOCAL_HOSTS = {"localhost"}


def is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened before any model loads so a taken port fails in a second."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise TuneforgeError(
            f"cannot listen on {host}:{port} ({err.strerror or err})",
            where="serve.port",
            fix="stop what uses the port or pick another with --port",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def check_engine(served: list[ServedModel], cfg: ServeConfig) -> None:
    """What the chosen engine needs (vLLM, GPUs), checked before the port and the weights."""
    if cfg.engine == "vllm":
        from tuneforge.serve.engine_vllm import plan_vllm, require_vllm

        require_vllm(cfg)
        plan_vllm(served)


def build_engine(served: list[ServedModel], cfg: ServeConfig) -> Any:
    if cfg.engine == "vllm":
        from tuneforge.serve.engine_vllm import VllmEngine

        return VllmEngine(served, cfg)
    from tuneforge.serve.engine_transformers import TransformersEngine

    return TransformersEngine(served, cfg)


def what_to_serve(
    targets: list[str], cfg: ServeConfig
) -> tuple[list[ServedModel], Registry | None, int | None]:
    """The models to load, and for registry:NAME the registry and its champion's version.

    Unknown or unfinished runs and a registry without a champion fail here, before the port and the weights.
    """
    from tuneforge.serve.champion import champion_models, open_registry, registry_target

    if not targets and cfg.model:
        targets = [cfg.model]
    if not targets:
        raise TuneforgeError(
            "nothing to serve",
            where="tuneforge serve",
            fix="name run directories, a model folder or built-in, or registry:NAME; or set serve.model",
        )
    name = registry_target(targets)
    if name is None:
        return resolve_targets(targets), None, None
    reg = open_registry(name, cfg)
    version, served = champion_models(reg)
    return served, reg, version


def run_server(targets: list[str], cfg: ServeConfig, *, insecure: bool = False) -> None:
    import uvicorn

    from tuneforge.models.threads import apply_threads
    from tuneforge.serve.app import create_app
    from tuneforge.serve.champion import ChampionWatcher, only_registry_name
    from tuneforge.serve.limits import Admission
    from tuneforge.serve.metrics import ServerMetrics, served_runs
    from tuneforge.serve.shadow import Shadow, shadow_plan
    from tuneforge.serve.state import AppState
    from tuneforge.serve.store import RequestLog, database_url

    checker = KeyChecker(KeyFile(cfg.keys_file))
    if not checker.required and not is_local(cfg.host) and not insecure:
        raise TuneforgeError(
            f"refusing to serve on {cfg.host} without API keys (anyone who can reach it could use the model)",
            where="serve.host",
            fix="create a key first (tuneforge keys create NAME), bind to 127.0.0.1, or pass --insecure",
        )
    served, reg, version = what_to_serve(targets, cfg)
    shadowed = shadow_plan(cfg, reg, version)
    check_engine(served, cfg)
    log = None
    if cfg.log_db:  # an unusable log stops the server with one line, before the minutes of loading
        log = RequestLog(database_url(cfg.log_db), keep_text=cfg.log_text, redact=list(cfg.redact_pii))
    try:
        sock = bind(cfg.host, cfg.port)
        apply_threads(cfg.num_threads, "serve.num_threads")
        engine = build_engine(served, cfg)
        shadow = None
        if reg is not None:
            only_registry_name(engine, reg.name)
            if shadowed is not None:
                challenger = only_registry_name(build_engine(shadowed[1], cfg), reg.name)
                shadow = Shadow(challenger, shadowed[0], cfg.shadow_fraction)
    except BaseException:
        if log is not None:
            log.close()
        raise
    metrics = ServerMetrics(lambda: float(state.queue_depth()))
    if log is not None:
        metrics.watch_log(log)
    metrics.watch_drift(lambda: served_runs(state.engine.models))
    state = AppState(
        engine=engine,
        cfg=cfg,
        keys=checker,
        log=log,
        admission=Admission(cfg.max_queue, cfg.max_concurrent_per_key),
        metrics=metrics,
        registry=reg.name if reg is not None else None,
        version=version,
        shadow=shadow,
    )
    watcher = None
    if reg is not None:
        metrics.watch_registry(
            reg.name, lambda: float(state.version or 0), lambda: float(state.registry_problem is None)
        )
        watcher = ChampionWatcher(state, reg, lambda s: build_engine(s, cfg), cfg.registry_poll_s)
        watcher.start()
    asgi, _ = create_app(state)
    config = uvicorn.Config(
        asgi,
        log_level="warning",
        timeout_graceful_shutdown=int(cfg.shutdown_grace_s) or None,
        lifespan="off",
    )
    server = _Server(config, state)
    which = f" (version {version} of registry {reg.name})" if reg is not None else ""
    if shadow is not None:
        which += f" (shadowed by version {shadow.version} on {cfg.shadow_fraction:.0%} of requests)"
    print(f"serving {', '.join(engine.models)}{which} on http://{cfg.host}:{cfg.port}/v1", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        if watcher is not None:
            watcher.stop()
        state.engine.close()
        if shadow is not None:
            shadow.close()
        if log is not None:
            log.close()


class _Server:
    """uvicorn.Server whose SIGTERM ends in exit 0 after a graceful shutdown, marking /ready 503 at once."""

    def __new__(cls, config: Any, state: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                state.shutting_down = True
                if sig == signal.SIGTERM:
                    self.should_exit = True  # not recorded: uvicorn would re-raise it after shutting down
                    return
                super().handle_exit(sig, frame)

        return Server(config)
