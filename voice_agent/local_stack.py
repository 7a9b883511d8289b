"""The local stack: the production handlers and worker on one machine, no AWS account.

What runs where, and what stands in for AWS:
- moto in server mode (real DynamoDB/SQS wire protocol) with the table and queues created
  from ``infra.specs``, the same definitions the Pulumi program deploys;
- the API Gateway WebSocket emulator, calling the real ``handlers.*.handler`` functions
  with events shaped as API Gateway sends them, and serving ``@connections`` and the page;
- the real workers (``python -m worker``), each in its own process as on ECS, sharing
  ``slots`` worker slots (one queue each, leased in the table; see wire/slots.py); a
  worker that exits is started again, as the ECS service would;
- the OpenAI Realtime emulator, unless ``OPENAI_API_KEY`` is set (then real OpenAI).

Only endpoints differ from production, through the same environment variables.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3

from infra.specs import create_local_resources
from wire import realtime as rt
from wire import slots
from wire import token as tokens

log = logging.getLogger("voice-agent.local")

REPO_ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = REPO_ROOT / "static"
REGION = "us-east-1"
STAGE = "local"
LOCAL_AUDIENCE = tokens.audience_for("local")


@dataclass
class LocalStackOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Worker slots (queues); None: one per worker.
    slots: int | None = None
    # Start a worker again when one exits (ECS does); tests of a handover may turn it off.
    respawn_workers: bool = True
    # Repeat and reorder frames between the handlers and the queue (emulators/queue_chaos.py),
    # seeded; None: no faults.
    queue_chaos_seed: int | None = None
    model: str = "gpt-realtime-mini"
    voice: str = rt.DEFAULT_VOICE
    openai_api_key: str = ""
    chunk_bytes: int | None = None
    log_level: str = "WARNING"
    # Extra environment for worker processes (benchmarks and tests tune the worker here).
    worker_env: dict[str, str] = field(default_factory=dict)
    # "lambda": $default runs the handler; "sqs": API Gateway's SQS integration (no Lambda),
    # emulated with the very mapping template the stack deploys.
    default_route: str = "lambda"
    # Concurrent calls $connect admits (0 = no limit), as the stack's maxSessions.
    max_sessions: int = 100
    # Lifetime of the token in the printed URLs (`voice-agent token --local` mints more).
    token_ttl_seconds: int = tokens.MAX_TTL_SECONDS


@dataclass
class LocalStackUrls:
    page: str  # the page, already pointed at the WebSocket with a valid token
    websocket: str  # the WebSocket URL with a valid token
    websocket_base: str  # without a token: connects are refused (401)
    connections: str
    realtime: str
    moto: str


def state_file() -> Path:
    """Where a running local stack leaves what `voice-agent token --local` needs (local only:
    the signing key of a throwaway stack on this machine). Tests point
    ``VOICE_AGENT_STATE_DIR`` elsewhere so their stacks never replace a user's."""
    directory = os.environ.get("VOICE_AGENT_STATE_DIR") or REPO_ROOT / ".local-stack"
    return Path(directory) / "state.json"


@dataclass(frozen=True)
class LocalState:
    websocket_base: str
    page_base: str
    audience: str
    secret: str

    def url_with_token(self, ttl_seconds: int, subject: str | None = None) -> str:
        token = tokens.mint(
            self.secret.encode(), self.audience, ttl_seconds=ttl_seconds, subject=subject
        )
        return with_token(self.websocket_base, token)

    def save(self) -> None:
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(asdict(self)))

    def forget(self) -> None:
        """Remove the state file if it is still this stack's."""
        try:
            if LocalState.load() == self:
                state_file().unlink()
        except (FileNotFoundError, OSError):
            pass

    @classmethod
    def load(cls) -> LocalState:
        return cls.load_from(state_file().parent)

    @classmethod
    def load_from(cls, directory: Path) -> LocalState:
        path = directory / "state.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            raise FileNotFoundError(
                f"no running local stack found ({path}); start one with `python3 dev.py local`"
            ) from None


def with_token(websocket_url: str, token: str) -> str:
    return f"{websocket_url}?{urlencode({'token': token})}"


def page_url(page_base: str, websocket_url: str) -> str:
    return f"{page_base}?{urlencode({'ws': websocket_url})}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalStack:
    """Start with ``await start()``, stop with ``await stop()``; one per process, because the
    handlers, as in Lambda, read their environment once at import."""

    def __init__(self, options: LocalStackOptions) -> None:
        self.options = options
        self._moto: Any = None
        self._realtime: Any = None
        self._gateway: Any = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._spawned = 0
        self._supervisor: asyncio.Task[None] | None = None
        self.health_files: list[Path] = []
        self.queue_urls: tuple[str, ...] = ()
        self.chaos: Any = None
        self.urls: LocalStackUrls | None = None
        self.state: LocalState | None = None

    async def start(self) -> LocalStackUrls:
        opts = self.options
        moto_url = self._start_moto()
        self._point_aws_at(moto_url)
        slot_count = opts.slots or opts.workers
        resources = create_local_resources(
            boto3.client("dynamodb", region_name=REGION),
            boto3.client("sqs", region_name=REGION),
            slots=slot_count,
        )
        self.queue_urls = tuple(resources.queue_urls)
        os.environ["SESSIONS_TABLE"] = resources.table_name
        os.environ[slots.ENV_QUEUE_URLS] = ",".join(self.queue_urls)
        os.environ["WORKER_SLOTS"] = str(len(self.queue_urls))
        os.environ.pop(slots.ENV_QUEUE_URL, None)
        os.environ["MAX_SESSIONS"] = str(opts.max_sessions)
        os.environ.setdefault("LOG_LEVEL", opts.log_level)
        signing_secret = self._create_auth_secret()

        realtime_url = await self._start_realtime()
        gateway = self._build_gateway()
        await gateway.start(host=opts.host, port=opts.port)
        self._gateway = gateway
        self.state = LocalState(
            websocket_base=gateway.ws_url,
            page_base=gateway.page_url,
            audience=LOCAL_AUDIENCE,
            secret=signing_secret,
        )
        self.state.save()
        websocket = self.state.url_with_token(opts.token_ttl_seconds)
        self.urls = LocalStackUrls(
            page=page_url(gateway.page_url, websocket),
            websocket=websocket,
            websocket_base=gateway.ws_url,
            connections=gateway.connections_endpoint_url,
            realtime=realtime_url,
            moto=moto_url,
        )
        for index in range(opts.workers):
            self._workers.append(self._spawn_worker(index))
        self._write_runtime_info()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        return self.urls

    def _write_runtime_info(self) -> None:
        """What tests and operators may inspect: endpoints and the worker processes (kept
        up to date as workers are started again), beside the state file."""
        if self.urls is None:
            return
        info = {
            "moto": self.urls.moto,
            "table": os.environ.get("SESSIONS_TABLE", ""),
            "queue_urls": list(self.queue_urls),
            "model_sessions_open": (
                self._realtime.open_sessions if self._realtime is not None else None
            ),
            "queue_chaos": (
                {"repeated": self.chaos.repeated, "reordered": self.chaos.reordered}
                if self.chaos is not None
                else None
            ),
            "workers": [
                {"pid": worker.pid, "health_file": str(health)}
                for worker, health in zip(self._workers, self.health_files, strict=False)
            ],
        }
        path = state_file().with_name("runtime.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(info))
        partial.replace(path)  # readers never see half a file

    async def _supervise(self) -> None:
        """Start a worker again when one exits, like the ECS service scheduler (unless
        told not to), and keep runtime.json's counters current."""
        while True:
            await asyncio.sleep(0.5)
            self._write_runtime_info()
            for index, worker in enumerate(self._workers):
                if worker.poll() is not None and self.options.respawn_workers:
                    log.warning("worker %d exited (%s); starting another", index, worker.returncode)
                    self._workers[index] = self._spawn_worker(index)
                    self._write_runtime_info()

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        for worker in self._workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self._workers:
            try:
                await asyncio.to_thread(worker.wait, 15)
            except subprocess.TimeoutExpired:
                worker.kill()
        self._workers.clear()
        if self._gateway is not None:
            await self._gateway.stop()
        if self._realtime is not None:
            await self._realtime.stop()
        if self._moto is not None:
            self._moto.terminate()
            try:
                await asyncio.to_thread(self._moto.wait, 10)
            except subprocess.TimeoutExpired:
                self._moto.kill()
        if self.state is not None:
            self.state.forget()

    @property
    def worker_processes(self) -> list[subprocess.Popen[bytes]]:
        return self._workers

    # --- parts ----------------------------------------------------------------------------

    def _start_moto(self) -> str:
        """moto in a process of its own: in this one it would share the interpreter lock
        with the gateway and the handlers, and the three together saturate one core at
        a few concurrent calls."""
        host = self.options.host
        port = free_port(host)
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # werkzeug logs every request there
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    break
            except OSError:
                if self._moto.poll() is not None or time.monotonic() > deadline:
                    raise OSError(f"moto did not start on {host}:{port}") from None
                time.sleep(0.1)
        return f"http://{host}:{port}"

    @staticmethod
    def _point_aws_at(moto_url: str) -> None:
        # Credentials moto accepts; never real ones, so nothing can reach AWS by accident.
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
                "AWS_ENDPOINT_URL_SQS": moto_url,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_url,  # service id "Secrets Manager"
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)

    @staticmethod
    def _create_auth_secret() -> str:
        """The token signing key, in (moto's) Secrets Manager as in a deployed stack."""
        value = secrets.token_urlsafe(32)
        created = boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=f"voice-agent-local-connect-token-{secrets.token_hex(4)}", SecretString=value
        )
        os.environ["AUTH_SECRET_ARN"] = created["ARN"]
        os.environ["TOKEN_AUDIENCE"] = LOCAL_AUDIENCE
        return value

    async def _start_realtime(self) -> str:
        if self.options.openai_api_key:
            return rt.DEFAULT_BASE_URL
        from emulators.realtime import RealtimeEmulator

        self._realtime = RealtimeEmulator()
        return str(await self._realtime.start(host=self.options.host, port=0))

    def _build_gateway(self) -> Any:
        from emulators.api_gateway import ApiGatewayEmulator

        # Imported only now: like Lambda, the handlers read their environment at import.
        runtime = importlib.import_module("handlers.runtime")
        if self.options.queue_chaos_seed is not None:
            from emulators.queue_chaos import ChaoticSqs

            # Before the handlers import it: they bind the client by name.
            self.chaos = ChaoticSqs(runtime.sqs, seed=self.options.queue_chaos_seed)  # type: ignore[attr-defined]
            runtime.sqs = self.chaos  # type: ignore[attr-defined]
        routes = {
            "$connect": importlib.import_module("handlers.connect").handler,
            "$default": importlib.import_module("handlers.default").handler,
            "$disconnect": importlib.import_module("handlers.disconnect").handler,
        }
        if self.options.default_route == "sqs":
            from emulators.sqs_integration import sqs_integration_target

            routes["$default"] = sqs_integration_target(
                self.chaos or boto3.client("sqs", region_name=REGION)
            )
        return ApiGatewayEmulator(
            routes=routes,
            authorizer=importlib.import_module("handlers.authorize").handler,
            authorizer_identity_sources=["route.request.querystring.token"],
            stage=STAGE,
            static_dir=STATIC_DIR,
        )

    def _spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        assert self.urls is not None
        opts = self.options
        self._spawned += 1
        health_file = Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"voice-agent-worker-{os.getpid()}-{index}"
        )
        if index < len(self.health_files):
            self.health_files[index] = health_file
        else:
            self.health_files.append(health_file)
        env = dict(os.environ)
        env.update(
            {
                # Unique per process, as on ECS: a restarted worker is a new lease holder.
                "WORKER_ID": f"local-{index}-{self._spawned}",
                # Slots change hands within a second here (the cloud default is 5 s ticks,
                # 20 s leases: fewer table writes); long polls end often so a worker that
                # gives a slot up lets go of its queue quickly.
                "SLOT_TICK_SECONDS": "0.5",
                "SLOT_LEASE_SECONDS": "3",
                "SQS_WAIT_SECONDS": "2",
                "DRAIN_WAIT_SECONDS": "10",
                "CONNECTIONS_ENDPOINT_URL": self.urls.connections,
                "REALTIME_BASE_URL": self.urls.realtime,
                "REALTIME_MODEL": opts.model,
                "REALTIME_VOICE": opts.voice,
                "OPENAI_API_KEY": opts.openai_api_key,
                "HEALTH_FILE": str(health_file),
                # One poller: moto's long poll spins on a FIFO group another poller holds
                # in flight (it snapshots the in-flight groups when the poll starts), which
                # starves the server. Real SQS has no such problem; the worker's default is 4.
                "SQS_POLLERS": env.get("SQS_POLLERS", "1"),
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        if opts.chunk_bytes:
            env["AUDIO_CHUNK_BYTES"] = str(opts.chunk_bytes)
        env.update(opts.worker_env)
        return subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env=env,
            cwd=str(REPO_ROOT),
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """In a child, before exec: end with the stack, even if the stack is killed outright
    (Linux's parent-death signal; elsewhere the stack's own stop() is all there is)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
