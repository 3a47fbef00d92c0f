"""GenRM as a reward service: a batched, authenticated HTTP scorer for RL and Best-of-N loops.

    python -m genrm_jax.serve --model DIR --method genrm|genrm_cot|disc|dpo [--votes K] \\
        [--task gsm8k] [--host 127.0.0.1] [--port 8000] [--token_file F] [--max_rows 64] \\
        [--max_wait_ms 5] [--mesh DATA,FSDP,TENSOR] [--gin_file F] [--gin_bindings B]

Endpoints (wire formats in ``genrm_jax.serve.api``): ``POST /v1/score`` (native), ``POST
/get_reward`` (OpenRLHF's ``--remote_rm_url`` contract), ``GET /health`` and ``GET /metrics``
(Prometheus text). A GenRM model serves ``genrm`` and ``genrm_cot`` (a request picks with
``method``); ``disc`` and ``dpo`` serve themselves. Scores are ``genrm_jax.scoring``'s, with the
task's instruction (``--task``) and ``ScoringConfig`` from gin, exactly as ``genrm_jax.eval``
computes them; CoT rationales draw from (``--seed``, item, k), so a CoT score does not depend on
how requests were batched.

Requests are batched dynamically (``genrm_jax.serve.batcher``): ``--max_rows`` rows a batch (a
CoT item is K rows; 1 turns batching off) and ``--max_wait_ms`` for a batch to fill. JAX runs on
one scoring thread; the model sits on this host's devices (``--mesh``, as in eval; default: one).

Safety: the default bind is loopback; any other address refuses to start without
``--token_file`` (a file holding a bearer token), and with a token every request needs
``Authorization: Bearer <token>`` (else 401). Bad requests get 400 naming the field and index;
too many items (``--max_items``) or bytes (``--max_body_bytes``) 413; a full queue
(``--max_queue_items``) 503 with Retry-After; a batch whose scoring fails 500 to its requests
alone. SIGTERM stops accepting connections, answers every request already received, exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import os
import signal
import time
from typing import Any, Protocol, Sequence

import fastapi
import jax
import uvicorn
from starlette.responses import JSONResponse, Response

from genrm_jax import checkpoint
from genrm_jax import cli
from genrm_jax import scoring
from genrm_jax import task_rules
from genrm_jax.config import SamplerConfig, ScoringConfig
from genrm_jax.serve import api
from genrm_jax.serve.batcher import Batcher, BatchFailed, Kind, QueueFull
from genrm_jax.serve.metrics import Metrics

log = logging.getLogger("genrm_jax.serve")

ENDPOINTS = ("/v1/score", "/get_reward", "/health", "/metrics")
# So that --gin_bindings may name them (ScoringConfig.rationale = @SamplerConfig()).
cli.register(ScoringConfig)
cli.register(SamplerConfig)


def served(method: str | None = None) -> tuple[str, ...]:
  """The methods a model directory can be served for (LLM-as-a-Judge ones are not: they score
  with an untuned model); with ``method``, those of its objective, ``method`` first."""
  known = scoring.methods()
  out = tuple(name for name, (o, m) in known.items()
              if not m.untuned and (method is None or o is known[method][0]))
  return out if method is None else (method, *(m for m in out if m != method))


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  model: str
  method: str = "genrm"
  task: str = "gsm8k"  # its instruction goes into every prompt, as in eval
  votes: int = 0  # default K for CoT; 0 = ScoringConfig.num_rationales
  seed: int = 0
  host: str = "127.0.0.1"
  port: int = 8000  # 0 = any free port (printed when ready)
  token_file: str = ""
  max_rows: int = 64
  max_wait_ms: float = 5.0
  max_queue_items: int = 4096
  max_items: int = 1024  # per request
  max_votes: int = 64
  max_body_bytes: int = 8 << 20
  mesh: tuple[int, ...] = ()

  def __post_init__(self):
    if self.method not in served():
      raise ValueError(f"--method {self.method!r}: expected one of {served()}")
    for name in ("max_rows", "max_queue_items", "max_items", "max_votes", "max_body_bytes"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1")
    if self.max_items > self.max_queue_items:
      raise ValueError(f"--max_items {self.max_items} exceeds --max_queue_items "
                       f"{self.max_queue_items}: such a request could never be queued")
    if self.max_wait_ms < 0 or self.votes < 0:
      raise ValueError("--max_wait_ms and --votes must be >= 0")


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:  # a host name: it may resolve anywhere
    return False


def read_token(sc: ServeConfig) -> str | None:
  """The bearer token, or None; refuses a non-loopback bind without one."""
  if not sc.token_file:
    if not is_loopback(sc.host):
      raise ValueError(f"--host {sc.host} is not a loopback address: refusing to serve it without "
                       "--token_file (a file holding the bearer token clients must send)")
    return None
  with open(sc.token_file) as f:
    token = f.read().strip()
  if not token or any(c.isspace() for c in token):
    raise ValueError(f"--token_file {sc.token_file}: expected one token, no whitespace")
  return token


class Scorer(Protocol):
  """What the app needs from the model side (``ModelScorer``; tests also use stand-ins)."""
  methods: tuple[str, ...]  # the first is the default
  votes: int
  max_seq_len: int
  specials: tuple[str, ...]  # special pieces as text, stripped from /get_reward queries
  info: dict[str, Any]

  def needed(self, method: str, question: str, solution: str) -> int: ...

  def score(self, kind: Kind, items: Sequence[tuple[str, str]]) -> tuple[list[dict], int]: ...


class ModelScorer:
  """A model directory scored with ``genrm_jax.scoring`` on this host's devices."""

  def __init__(self, sc: ServeConfig):
    mesh = cli.mesh(sc.mesh, devices=jax.local_devices())
    task_rules.check_trained_task(checkpoint.model_meta(sc.model, "--model"), sc.task,
                                  f"--model {sc.model}")
    self.verifier = scoring.load_verifier(sc.model, sc.method, mesh, what=f"--model {sc.model}")
    self.opts = cli.configure(ScoringConfig,
                              instruction=task_rules.get_task(sc.task).instruction,
                              num_rationales=sc.votes or None)
    self.seed = sc.seed
    self.methods = served(sc.method)
    self.votes = self.opts.num_rationales
    self.max_seq_len = self.verifier.cfg.max_seq_len
    sp = self.verifier.vocab.sp
    self.specials = tuple(sp.id_to_piece(i) for i in (sp.bos_id(), sp.eos_id(), sp.pad_id())
                          if i >= 0)
    devices = mesh.devices.flat if mesh is not None else jax.local_devices()[:1]
    self.info = {"model": os.path.abspath(sc.model), "methods": list(self.methods),
                 "votes": self.votes, "task": sc.task, "max_seq_len": self.max_seq_len,
                 "devices": [str(d) for d in devices],
                 "mesh": dict(mesh.shape) if mesh is not None else None}

  def needed(self, method: str, question: str, solution: str) -> int:
    return scoring.context_needed(method, self.verifier.vocab, question, solution, self.opts)

  def score(self, kind: Kind, items: Sequence[tuple[str, str]]) -> tuple[list[dict], int]:
    # One chunk for the whole batch: the batcher already bounded its rows.
    opts = dataclasses.replace(self.opts, num_rationales=kind.votes,
                               max_rows=len(items) * kind.votes)
    r = self.verifier.score(kind.method, [q for q, _ in items], [s for _, s in items], opts,
                            seed=self.seed)
    out = []
    for i in range(len(items)):
      entry = {"score": float(r.scores[i]),
               "p_yes": None if r.p_yes is None else float(r.p_yes[i]),
               "p_no": None if r.p_no is None else float(r.p_no[i])}
      if r.rationales is not None:
        entry["rationales"] = r.rationales[i]
        entry["rationale_p_yes"] = [float(p) for p in r.rationale_p_yes[i]]
      out.append(entry)
    return out, r.tokens


def _error(status: int, message: str, headers: dict[str, str] | None = None):
  return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Guard:
  """ASGI middleware: bearer-token check (when a token is set) and per-request metrics."""

  def __init__(self, app, token: str | None, metrics: Metrics):
    self.app, self.token, self.metrics = app, token, metrics
    self.expected = None if token is None else f"Bearer {token}".encode()

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start, status = time.monotonic(), [500]

    async def recording_send(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      await send(message)

    given = dict(scope["headers"]).get(b"authorization", b"")
    if self.expected is not None and not hmac.compare_digest(given, self.expected):
      reply = _error(401, "authorization: missing or wrong bearer token",
                     {"WWW-Authenticate": "Bearer"})
      await reply(scope, receive, recording_send)
    else:
      await self.app(scope, receive, recording_send)
    endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
    self.metrics.requests.labels(endpoint, str(status[0])).inc()
    self.metrics.latency.labels(endpoint).observe(time.monotonic() - start)


async def _read_json(request, limit: int) -> Any:
  length = request.headers.get("content-length", "")
  if length.isdigit() and int(length) > limit:
    raise api.ApiError(413, "body", f"{length} bytes, over the limit of {limit}")
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > limit:
      raise api.ApiError(413, "body", f"over the limit of {limit} bytes")
  return api.parse_json(bytes(body))


def build_app(scorer: Scorer, sc: ServeConfig, token: str | None):
  """The FastAPI application (its lifespan starts and drains the batcher)."""
  metrics = Metrics()
  batcher = Batcher(scorer.score, max_rows=sc.max_rows, max_wait_s=sc.max_wait_ms / 1000,
                    max_queue_items=sc.max_queue_items, metrics=metrics)
  limits = api.Limits(scorer.methods, scorer.votes, sc.max_votes, sc.max_items)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.start()
    yield
    await batcher.stop()

  app = fastapi.FastAPI(title="genrm-jax reward server", lifespan=lifespan, docs_url=None,
                redoc_url=None, openapi_url=None)
  app.add_middleware(_Guard, token=token, metrics=metrics)

  async def scored(req: api.Request) -> list[dict]:
    await asyncio.to_thread(api.check_context, req, scorer.needed, scorer.max_seq_len)
    return await batcher.submit(Kind(req.method, req.votes), req.items)

  @app.post("/v1/score")
  async def score(request: fastapi.Request):
    req = api.parse_score(await _read_json(request, sc.max_body_bytes), limits)
    return JSONResponse(api.score_response(req, await scored(req)))

  @app.post("/get_reward")
  async def get_reward(request: fastapi.Request):
    req = api.parse_get_reward(await _read_json(request, sc.max_body_bytes), limits,
                                     scorer.specials)
    return JSONResponse(api.reward_response(await scored(req)))

  @app.get("/health")
  async def health():
    return {"status": "ok", **scorer.info, "queue_depth": batcher.depth,
            "max_rows": sc.max_rows, "max_wait_ms": sc.max_wait_ms}

  @app.get("/metrics")
  async def prometheus():
    return Response(metrics.render(), media_type=metrics.content_type)

  @app.exception_handler(api.ApiError)
  async def refused(_, e: api.ApiError):
    return _error(e.status, str(e))

  @app.exception_handler(QueueFull)
  async def busy(_, e: QueueFull):
    return _error(503, str(e), {"Retry-After": str(e.retry_after)})

  @app.exception_handler(BatchFailed)
  async def failed(_, e: BatchFailed):
    return _error(500, str(e))

  app.state.batcher, app.state.metrics = batcher, metrics
  return app


async def serve(app, sc: ServeConfig, signalled: Sequence[int] = ()) -> None:
  """Runs uvicorn until SIGTERM / SIGINT (it then drains), printing one line once listening.

  ``signalled`` lists signals received before uvicorn took over their handling: they stop the
  server as soon as it is up.
  """
  # The standard asyncio loop: uvloop is not a dependency, so every install runs the same loop.
  server = uvicorn.Server(uvicorn.Config(app, host=sc.host, port=sc.port, access_log=False,
                                         log_level="info", lifespan="on", loop="asyncio"))
  task = asyncio.create_task(server.serve())
  while not server.started and not task.done():
    await asyncio.sleep(0.02)
  if signalled:
    server.should_exit = True
  if server.started:
    port = server.servers[0].sockets[0].getsockname()[1]
    host = f"[{sc.host}]" if ":" in sc.host else sc.host
    print(f"genrm_jax.serve: ready on http://{host}:{port}", flush=True)
  await task


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.serve", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", required=True, help="model directory")
  ap.add_argument("--method", required=True, choices=served())
  ap.add_argument("--task", default="gsm8k", choices=sorted(task_rules.TASKS))
  ap.add_argument("--votes", type=int, default=0, help="K rationales a CoT item (default: "
                  "ScoringConfig.num_rationales); a request may ask for others up to --max_votes")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--host", default="127.0.0.1")
  ap.add_argument("--port", type=int, default=8000)
  ap.add_argument("--token_file", default="")
  ap.add_argument("--mesh", default="", help="DATA,FSDP,TENSOR over this host's devices")
  for name, kind, default in (("max_rows", int, 64), ("max_wait_ms", float, 5.0),
                              ("max_queue_items", int, 4096), ("max_items", int, 1024),
                              ("max_votes", int, 64), ("max_body_bytes", int, 8 << 20)):
    ap.add_argument(f"--{name}", type=kind, default=default)
  ap.add_argument("--gin_file", action="append", default=[])
  ap.add_argument("--gin_bindings", action="append", default=[])
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

  def start() -> tuple[ServeConfig, str | None, ModelScorer]:
    mesh = cli.int_tuple("--mesh", args.mesh or None, minimum=-1) or ()
    fields = {f.name for f in dataclasses.fields(ServeConfig)} - {"mesh"}
    sc = ServeConfig(mesh=mesh, **{k: v for k, v in vars(args).items() if k in fields})
    token = read_token(sc)
    cli.parse_gin(args.gin_file, args.gin_bindings)
    return sc, token, ModelScorer(sc)

  started = []
  cli.main(lambda: started.append(start()))
  sc, token, scorer = started[0]
  # uvicorn handles SIGTERM/SIGINT while serving (drain, then stop) and, once done, re-raises the
  # signal to the handler it found: this one only records it, so a drained server exits 0.
  signalled: list[int] = []
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, _: signalled.append(s))
  asyncio.run(serve(build_app(scorer, sc, token), sc, signalled))
