"""Batched sampling and cached-prefix extension over a KV cache, jitted once per shape bucket.

Two jitted primitives carry everything (decoding in ``sample`` and all of ``scoring``):

* ``extend``: takes rows of an existing cache (``parent`` picks, and may repeat, them), appends a
  block of new tokens to each row and returns the grown cache plus what a scorer reads at each row's
  last token. A first ``prefill`` is an ``extend`` of an empty cache. Chaining them shares work: a
  question prefix is prefilled once, each solution extends it, each of K rationales extends that.
* ``decode``: takes rows of a cache (again via ``parent``), then samples one token a step inside
  a ``lax.while_loop`` over a cache grown by ``max_new_tokens`` slots, until every row hit a stop
  token / stop sequence or the length limit. K samples of each prompt read one copy of its cache
  (``kv_cache.with_shared``) rather than K copies.

All rows share one cache write index (``cache['end']``). Prompts are left-padded and later blocks
right-padded; padding carries segment id 0, so its slots get position -1 and are never attended;
positions count from each row's first real token, so padding changes nothing numerically.
Batch, prompt and block lengths are rounded up to buckets, so repeated calls of similar shapes reuse
one compiled program (``TRACES`` counts the traces). On a mesh, rows are sharded over (data, fsdp)
and the cache over (data, fsdp) x tensor (kv heads) through ``kv_cache.cache_shardings``.

Stop strings: the loop stops a row early when its last tokens equal a stop string's tokenization
(as encoded alone and after a newline or a space, since SentencePiece tokenizes differently in
context); the text is then cut at the first occurrence of any stop string after detokenizing,
which is the authoritative check (a stop string tokenized in yet another way costs extra steps,
never a wrong text).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax import kv_cache
from genrm_jax import logits as logits_lib
from genrm_jax import model as model_lib
from genrm_jax import sharding
from genrm_jax.config import ModelConfig, SamplerConfig

# Traces (= compilations) per primitive; tests assert that same-bucket calls do not add any.
TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class _DecodeSpec:
  """The part of a SamplerConfig (plus the tokenized stops) the compiled loop depends on."""
  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  stop_ids: tuple[int, ...]
  stop_seqs: tuple[tuple[int, ...], ...]


# ----------------------------------------------------------------------------- vocabulary adapter


@dataclasses.dataclass(frozen=True)
class Codec:
  """What sampling and scoring need from a vocabulary.

  Sequences start with BOS when ``bos_id`` is set, as the training pipeline (``genrm_jax.data``)
  builds them: ``[BOS] + encode(prompt) + encode(target) + [EOS]``.
  """
  encode: Callable[[str], list[int]]
  decode: Callable[[Sequence[int]], str]
  eos_id: int
  bos_id: int | None = None

  def prompt_ids(self, text: str) -> list[int]:
    ids = self.encode(text)
    return ids if self.bos_id is None else [self.bos_id, *ids]


def _id(vocab: Any, name: str) -> int | None:
  v = getattr(vocab, name, None)
  v = v() if callable(v) else v
  return None if v is None or v < 0 else int(v)


def as_codec(vocab: Any) -> Codec:
  """Adapts ``genrm_jax.vocab.Vocab``, a seqio SentencePieceVocabulary or a sentencepiece processor.

  Sequences start with the vocabulary's BOS when it has one (a negative id means none).
  """
  if isinstance(vocab, Codec):
    return vocab
  eos = _id(vocab, "eos_id")
  if eos is None:
    raise ValueError(f"vocabulary {vocab!r} has no EOS id")
  return Codec(encode=lambda s: [int(i) for i in vocab.encode(s)],
               decode=lambda ids: vocab.decode([int(i) for i in ids]), eos_id=eos,
               bos_id=_id(vocab, "bos_id"))


def stop_sequences(codec: Codec, stop_strings: Sequence[str]) -> tuple[tuple[int, ...], ...]:
  """Token sequences of each stop string: alone, and after a newline or a space."""
  seqs = set()
  for s in stop_strings:
    if not s:
      raise ValueError("SamplerConfig.stop_strings contains an empty string")
    seqs.add(tuple(codec.encode(s)))
    for ctx in ("\n", " "):
      head, full = codec.encode(ctx), codec.encode(ctx + s)
      if full[:len(head)] == head and len(full) > len(head):
        seqs.add(tuple(full[len(head):]))
  return tuple(sorted(s for s in seqs if s))


# ----------------------------------------------------------------------------- buckets and packing


def bucket(n: int, buckets: Sequence[int], multiple: int = 1) -> int:
  """The smallest bucket >= n (beyond the last: a multiple of it), rounded up to ``multiple``."""
  b = next((x for x in buckets if x >= n), None)
  if b is None:
    b = -(-n // buckets[-1]) * buckets[-1]
  return -(-b // multiple) * multiple


def pack(seqs: Sequence[Sequence[int]], rows: int, length: int, *, left: bool,
         start: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """[rows, length] tokens/positions/segment_ids plus each row's last real index.

  ``left`` pads on the left (a prompt whose last token must sit in the last column); otherwise on
  the right, continuing each row at position ``start[i]``. Rows beyond ``len(seqs)`` are padding.
  """
  tokens = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  segs = np.zeros((rows, length), np.int32)
  last = np.full((rows,), length - 1 if left else 0, np.int32)
  for i, s in enumerate(seqs):
    n = len(s)
    if n == 0 or n > length:
      raise ValueError(f"pack: row {i} has {n} tokens; expected 1..{length}")
    lo = length - n if left else 0
    first = 0 if start is None else int(start[i])
    tokens[i, lo:lo + n] = s
    positions[i, lo:lo + n] = np.arange(first, first + n)
    segs[i, lo:lo + n] = 1
    last[i] = lo + n - 1
  return {"tokens": tokens, "positions": positions, "segment_ids": segs, "last_index": last}


# ----------------------------------------------------------------------------- jitted primitives


def _mesh_ctx(mesh):
  return contextlib.nullcontext() if mesh is None else sharding.use_mesh(mesh)


def _platform(mesh) -> str:
  return (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform


def _constrain_cache(cache, mesh):
  if mesh is None:
    return cache
  return jax.lax.with_sharding_constraint(cache, kv_cache.cache_shardings(cache, mesh))


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "token_logprobs"))
def _extend(params, cache, parent, tokens, positions, segment_ids, last_index, read_ids, *,
            cfg: ModelConfig, mesh, token_logprobs: bool):
  TRACES["extend"] += 1
  with _mesh_ctx(mesh):
    # The cache is always exactly full up to ``end`` before a write.
    cache = _constrain_cache(
        kv_cache.grow_cache(cfg, kv_cache.cache_rows(cache, parent), tokens.shape[1]), mesh)
    # Only the rows' last positions are unembedded (with Gemma's 256K vocabulary, the [M, T, V]
    # logits of a long block would dwarf everything else).
    hidden, cache = model_lib.Transformer(cfg).apply(
        {"params": params}, tokens, positions, segment_ids, cache=cache,
        method=model_lib.Transformer.hidden_states)
    cache = _constrain_cache(cache, mesh)
    embedding = params["embedder"]["input_embedding"]
    last_hidden = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)  # [M, 1, D]
    last_logits = model_lib.unembed(cfg, embedding, last_hidden)[:, 0]  # [M, V]
    out = {"last_logits": last_logits,
           "read_logprobs": jnp.take(jax.nn.log_softmax(last_logits), read_ids, axis=-1),
           "last_hidden": last_hidden[:, 0].astype(jnp.float32)}
    if token_logprobs:
      # log p(tokens[:, t+1] | ..., tokens[:, t]) for t < T-1.
      out["token_logprobs"] = logits_lib.token_stats(cfg, embedding, hidden[:, :-1],
                                                     tokens[:, 1:]).logprob
    return cache, out


def _filter_logits(logits, spec: _DecodeSpec):
  x = logits / spec.temperature
  if spec.top_k:
    kth = jax.lax.top_k(x, spec.top_k)[0][:, -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if spec.top_p < 1.0:
    desc = -jnp.sort(-x, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    # Keep the smallest head whose mass reaches top_p: tokens whose preceding mass is < top_p.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < spec.top_p
    threshold = jnp.take_along_axis(desc, jnp.sum(keep, axis=-1, keepdims=True) - 1, axis=-1)
    x = jnp.where(x < threshold, -jnp.inf, x)
  return x


def _step_key(key, step):
  """The key of one decoding step: one for the batch, or one per row (``key`` of shape [B])."""
  if key.ndim == 0:
    return jax.random.fold_in(key, step)
  return jax.vmap(lambda k: jax.random.fold_in(k, step))(key)


def _pick(logits, key, spec: _DecodeSpec):
  """(token, its log-probability under the raw model distribution)."""
  if spec.temperature == 0:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    x = _filter_logits(logits, spec)
    draw = jax.random.categorical if key.ndim == 0 else jax.vmap(jax.random.categorical)
    tok = draw(key, x).astype(jnp.int32)
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], axis=-1)[:, 0]
  return tok, lp


def _stopped(tokens, step, spec: _DecodeSpec):
  """Whether the token written at ``step`` ends a stop id or a stop sequence, per row."""
  hit = jnp.isin(tokens[:, step], jnp.asarray(spec.stop_ids or (-1,), jnp.int32))
  for seq in spec.stop_seqs:
    n = len(seq)
    window = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(step - n + 1, 0), n, axis=1)
    hit |= (step + 1 >= n) & jnp.all(window == jnp.asarray(seq, jnp.int32), axis=1)
  return hit


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "spec", "reps", "return_cache"))
def _decode(params, cache, parent, last_logits, next_pos, rng, row_seeds, num_real, *,
            cfg: ModelConfig, mesh, spec: _DecodeSpec, reps: int, return_cache: bool):
  TRACES["decode"] += 1
  n = spec.max_new_tokens
  if row_seeds is not None:
    rng = jax.vmap(lambda s: jax.random.fold_in(rng, s))(row_seeds)
  with _mesh_ctx(mesh):
    if reps:  # parent is repeat(arange(rows of cache), reps): the cache is read shared
      cache = kv_cache.with_shared(cfg, cache, reps, n)
    else:
      cache = kv_cache.grow_cache(cfg, kv_cache.cache_rows(cache, parent), n)
    cache = _constrain_cache(cache, mesh)
    logits0 = jnp.take(last_logits, parent, axis=0)
    pos0 = jnp.take(next_pos, parent, axis=0)
    b = parent.shape[0]
    transformer = model_lib.Transformer(cfg)
    variables = {"params": params}
    if not cfg.scan_groups and _platform(mesh) == "cpu":
      # Each step would otherwise copy the weights into the order XLA's CPU dots read
      # (model.decode_weights); other compilers choose weight layouts themselves.
      variables["decode"] = model_lib.decode_weights(cfg, params)

    tok, lp = _pick(logits0, _step_key(rng, 0), spec)
    tokens = jnp.zeros((b, n), jnp.int32).at[:, 0].set(tok)
    state = {"cache": cache, "tokens": tokens, "last_logits": logits0,
             "logprobs": jnp.zeros((b, n), jnp.float32).at[:, 0].set(lp),
             "num": jnp.ones((b,), jnp.int32),
             # Bucket padding rows start done, so they never keep the loop running.
             "done": _stopped(tokens, 0, spec) | (jnp.arange(b) >= num_real),
             "step": jnp.ones((), jnp.int32)}

    def cond(s):
      return (s["step"] < n) & ~jnp.all(s["done"])

    def body(s):
      step = s["step"]
      prev = jax.lax.dynamic_slice_in_dim(s["tokens"], step - 1, 1, axis=1)
      # A stopped row's feed is padding (segment 0): its keys are written with position -1,
      # never attended, and leave local layers' ring slots alone, so the cache stays a prefix
      # of the row's tokens (``return_prefix``).
      live = (~s["done"]).astype(jnp.int32)[:, None]
      logits, c = transformer.apply(variables, prev, (pos0 + step - 1)[:, None], live,
                                    cache=s["cache"])
      tok, lp = _pick(logits[:, 0], _step_key(rng, step), spec)
      last_logits = jnp.where(s["done"][:, None], s["last_logits"], logits[:, 0])
      tok = jnp.where(s["done"], 0, tok)
      lp = jnp.where(s["done"], 0.0, lp)
      tokens = jax.lax.dynamic_update_slice_in_dim(s["tokens"], tok[:, None], step, axis=1)
      logprobs = jax.lax.dynamic_update_slice_in_dim(s["logprobs"], lp[:, None], step, axis=1)
      return {"cache": _constrain_cache(c, mesh), "tokens": tokens, "last_logits": last_logits,
              "logprobs": logprobs,
              "num": jnp.where(s["done"], s["num"], step + 1),
              "done": s["done"] | _stopped(tokens, step, spec), "step": step + 1}

    s = jax.lax.while_loop(cond, body, state)
    # The cache holds each row's sampled tokens but its last (never fed back), and last_logits
    # follow the last fed token: a Prefix over the prompts and their completions.
    cache = None
    if return_cache:
      cache = _constrain_cache(kv_cache.merge_shared(s["cache"]) if reps else s["cache"], mesh)
    return cache, {"tokens": s["tokens"], "logprobs": s["logprobs"], "num": s["num"],
                        "done": s["done"], "last_logits": s["last_logits"],
                        "next_pos": pos0 + s["num"] - 1}


@jax.jit
def _rewind(cache, next_pos, drop):
  keep = (next_pos - drop)[:, None]
  forget = {name: jnp.where(cache[name] >= keep, -1, cache[name])
            for name in ("pos", "pos_local") if name in cache}
  return dict(cache, **forget)


# ----------------------------------------------------------------------------- host-side API


@dataclasses.dataclass
class Prefix:
  """A cache over ``num_rows`` real rows (plus bucket padding rows) and each row's next input."""
  cache: dict[str, jax.Array]
  # [rows, V] logits after each row's last token; None after ``rewind`` (extend, then decode).
  last_logits: jax.Array | None
  next_pos: np.ndarray  # [rows] position of each row's next token
  num_rows: int


def _put_rows(x, mesh):
  if mesh is None:
    return jnp.asarray(x)
  return jax.device_put(x, sharding.batch_sharding(mesh, np.ndim(x)))


def _row_multiple(mesh) -> int:
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def empty_prefix(cfg: ModelConfig, rows: int = 1, mesh=None) -> Prefix:
  cache = kv_cache.init_cache(cfg, rows, 0)
  if mesh is not None:
    cache = jax.device_put(cache, kv_cache.cache_shardings(cache, mesh))
  return Prefix(cache, jnp.zeros((rows, cfg.vocab_size), jnp.float32),
                np.zeros((rows,), np.int32), 0)


def extend(cfg: ModelConfig, params, prefix: Prefix | None, parent: Sequence[int],
           seqs: Sequence[Sequence[int]], *, read_ids: Sequence[int] = (0,),
           token_logprobs: bool = False, mesh=None,
           batch_buckets: Sequence[int] = SamplerConfig.batch_buckets,
           length_buckets: Sequence[int] = SamplerConfig.length_buckets,
           ) -> tuple[Prefix, dict[str, np.ndarray]]:
  """Row i continues row ``parent[i]`` of ``prefix`` (None: an empty cache) with ``seqs[i]``.

  Returns the new Prefix and, per real row: ``read_logprobs`` [M, len(read_ids)] (log-softmax over
  the full vocabulary after the row's last token), ``last_hidden`` [M, D] (final-norm hidden state
  at that token) and, when asked, ``token_logprobs``: a list of M arrays, entry t of row i being
  log p(seqs[i][t + 1] | the prefix and seqs[i][:t + 1]).
  """
  if len(parent) != len(seqs) or not seqs:
    raise ValueError(f"extend: {len(parent)} parents for {len(seqs)} sequences")
  fresh = prefix is None
  if fresh:
    if any(p != 0 for p in parent):
      raise ValueError("extend: parents must be 0 when starting from an empty cache")
    prefix = empty_prefix(cfg, 1, mesh)
  elif max(parent) >= prefix.num_rows:
    raise ValueError(f"extend: parent {max(parent)} >= {prefix.num_rows} rows of the prefix")
  rows = bucket(len(seqs), batch_buckets, _row_multiple(mesh))
  length = bucket(max(len(s) for s in seqs), length_buckets)
  start = None if fresh else prefix.next_pos[list(parent)]
  batch = pack(seqs, rows, length, left=fresh, start=start)
  par = np.zeros((rows,), np.int32)
  par[:len(parent)] = parent
  args = [_put_rows(a, mesh) for a in (par, batch["tokens"], batch["positions"],
                                       batch["segment_ids"], batch["last_index"])]
  cache, out = _extend(params, prefix.cache, *args, jnp.asarray(read_ids, jnp.int32), cfg=cfg,
                       mesh=mesh, token_logprobs=token_logprobs)
  next_pos = batch["positions"][np.arange(rows), batch["last_index"]] + 1
  m = len(seqs)
  host = {k: np.asarray(v)[:m] for k, v in out.items() if k != "last_logits"}
  if token_logprobs:
    first = batch["last_index"][:m] - np.array([len(s) for s in seqs]) + 1
    host["token_logprobs"] = [host["token_logprobs"][i, first[i]:first[i] + len(seqs[i]) - 1]
                              for i in range(m)]
  return Prefix(cache, out["last_logits"], next_pos, m), host


@dataclasses.dataclass
class Completion:
  text: str  # detokenized, cut before EOS / the first stop string
  token_ids: list[int]  # sampled tokens up to and including the one that stopped the row
  logprobs: list[float]  # raw model log-probability of each token in token_ids
  finish_reason: str  # "stop" (EOS, stop id or stop string) or "length"


def _shared_reps(prefix: Prefix, parent: Sequence[int]) -> int:
  """R when ``parent`` is R >= 2 rows for each of the prefix's first rows in order (K samples of
  each prompt) and its cache can be read shared (``kv_cache.with_shared``); else 0."""
  m = prefix.num_rows
  if "pos_local" in prefix.cache or len(parent) % m or len(parent) < 2 * m:
    return 0
  reps = len(parent) // m
  return reps if np.array_equal(parent, np.repeat(np.arange(m), reps)) else 0


def decode(cfg: ModelConfig, params, prefix: Prefix, parent: Sequence[int], codec: Codec,
           sampler_cfg: SamplerConfig, seed: int, mesh=None,
           row_seeds: Sequence[int] | None = None, return_prefix: bool = False,
           shared_prefix: bool = True):
  """Samples one completion per entry of ``parent`` (a row of ``prefix``; repeats share it).

  When ``parent`` is R >= 2 rows of each row of the prefix in turn (``sample``'s samples, the K
  rationales of scoring) and ``shared_prefix``, the R rows read their prefix's cache shared
  instead of R copies of it (global-attention models; the same tokens and numbers to float
  noise, faster when the prefix is long).

  With ``row_seeds`` (one 32-bit integer per entry), row i draws its tokens from
  ``fold_in(key(seed), row_seeds[i])`` alone: its sample no longer depends on which other rows
  share the batch or on its position there (the scorers rely on this to give an item the same
  rationales however it is batched). Without them, one key drives the whole batch.

  Returns the completions or, with ``return_prefix``, also the Prefix of the sampled rows: row i
  holds its parent's tokens and every token of completion i but the last (the one that stopped
  it, never fed back), so that scoring a completion extends this cache instead of recomputing it.
  """
  if not parent or max(parent) >= prefix.num_rows:
    raise ValueError(f"decode: parents {min(parent, default=None)}..{max(parent, default=None)}"
                     f" outside the {prefix.num_rows} rows of the prefix")
  if prefix.last_logits is None:
    raise ValueError("decode: the prefix was rewound; extend it by at least one token first")
  if row_seeds is not None and len(row_seeds) != len(parent):
    raise ValueError(f"decode: {len(row_seeds)} row seeds for {len(parent)} rows")
  sc = sampler_cfg
  spec = _DecodeSpec(sc.max_new_tokens, float(sc.temperature), sc.top_k, float(sc.top_p),
                     tuple(sorted({codec.eos_id, *sc.stop_token_ids})),
                     tuple(q for q in stop_sequences(codec, sc.stop_strings)
                           if len(q) <= sc.max_new_tokens))
  reps = _shared_reps(prefix, parent) if shared_prefix else 0
  if reps:  # every row of the prefix's cache (bucket padding too) gets reps rows
    rows = prefix.cache["pos"].shape[0] * reps
    par = np.repeat(np.arange(rows // reps, dtype=np.int32), reps)
  else:
    rows = bucket(len(parent), sc.batch_buckets, _row_multiple(mesh))
    par = np.zeros((rows,), np.int32)
    par[:len(parent)] = parent
  seeds = None
  if row_seeds is not None:
    seeds = np.zeros((rows,), np.uint32)
    seeds[:len(parent)] = row_seeds
    seeds = _put_rows(seeds, mesh)
  cache, out = _decode(params, prefix.cache, _put_rows(par, mesh), prefix.last_logits,
                       jnp.asarray(prefix.next_pos), jax.random.key(seed), seeds, len(parent),
                       cfg=cfg, mesh=mesh, spec=spec, reps=reps, return_cache=return_prefix)
  last_logits = out.pop("last_logits")
  out = jax.device_get(out)
  result = []
  for i in range(len(parent)):
    n = int(out["num"][i])
    ids = out["tokens"][i, :n].tolist()
    stopped = bool(out["done"][i])
    body = ids[:-1] if stopped and ids[-1] in spec.stop_ids else ids
    text = codec.decode(body)
    cuts = [text.find(s) for s in sc.stop_strings if s in text]
    if cuts:
      text, stopped = text[:min(cuts)], True
    result.append(Completion(text, ids, out["logprobs"][i, :n].tolist(),
                             "stop" if stopped else "length"))
  if return_prefix:
    return result, Prefix(cache, last_logits, out["next_pos"], len(parent))
  return result


def rewind(prefix: Prefix, drop: Sequence[int]) -> Prefix:
  """Forgets the last ``drop[i]`` tokens of each row i (e.g. sampled tokens that a text cut
  removed); their slots stay but are never attended again. The rewound rows' logits are unknown
  until an ``extend``. See ``can_rewind`` for local layers' ring caches."""
  d = _drops(prefix, drop)
  if not can_rewind(prefix, d):
    raise ValueError(f"rewind: drops {list(drop)} reach keys that local layers' ring cache "
                     "has overwritten")
  cache = _rewind(prefix.cache, jnp.asarray(prefix.next_pos), jnp.asarray(d))
  return Prefix(cache, None, prefix.next_pos - d, prefix.num_rows)


def can_rewind(prefix: Prefix, drop: Sequence[int]) -> bool:
  """Whether ``rewind(prefix, drop)`` is exact. A local layer's ring slot holds the latest of
  the positions congruent modulo its length: forgetting token p > 0 positions after the row's
  new end brings back queries that need position p - window, which p overwrote once p >= window
  (the first forgotten token's predecessor there is out of every new query's window)."""
  d = _drops(prefix, drop)
  if "pos_local" not in prefix.cache:
    return True
  ring = prefix.cache["pos_local"].shape[1]
  return not np.any((d >= 2) & (prefix.next_pos - 1 >= ring))


def _drops(prefix: Prefix, drop: Sequence[int]) -> np.ndarray:
  d = np.zeros(len(prefix.next_pos), np.int32)
  d[:len(drop)] = drop
  if np.any(d < 0) or np.any(d > prefix.next_pos):
    raise ValueError(f"rewind: drops {list(drop)} outside 0..the row's length")
  return d


def sample(cfg: ModelConfig, params, vocab: Any, prompts: Sequence[str],
           sampler_cfg: SamplerConfig, seed: int = 0, num_samples: int = 1,
           mesh=None) -> list[list[Completion]]:
  """``num_samples`` completions of each prompt; each prompt is prefilled once for its samples."""
  if not prompts:
    return []
  if num_samples < 1:
    raise ValueError(f"sample: num_samples={num_samples}; must be >= 1")
  codec = as_codec(vocab)
  seqs = [codec.prompt_ids(p) for p in prompts]
  for i, s in enumerate(seqs):
    if not s:
      raise ValueError(f"sample: prompt {i} encodes to no tokens")
  prefix, _ = extend(cfg, params, None, [0] * len(seqs), seqs, mesh=mesh,
                     batch_buckets=sampler_cfg.batch_buckets,
                     length_buckets=sampler_cfg.length_buckets)
  parent = np.repeat(np.arange(len(seqs)), num_samples).tolist()
  flat = decode(cfg, params, prefix, parent, codec, sampler_cfg, seed, mesh)
  return [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(seqs))]
