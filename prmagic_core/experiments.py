"""Sweeps of PR-MaGIC settings into one tidy table, cached and resumable.

    lab = Lab(Setup(backend="tiny", dataset="shapeworld"), cache_dir="build/cache")
    table = lab.sweep(Sweep(baselines=("persam_f",), etas=(1e-2, 1e-3), seeds=(0,), episodes=8))
    analysis.bto(table)         # B / T per selector / O per setting and seed, both metrics

The numbers a table gives are computed by :mod:`prmagic_core.analysis` (pure functions of the
table); this module makes the table.

The table has one row per (baseline, eta, gamma, drift, seed, episode, step): the candidate's
IoU and its intersection/union counts (so class-wise mIoU can be summed), every selector's
score and chosen flag, the oracle flag, the flow step taken after it (d_phi, drift and noise
norms), its prompts and its mask (packed bits). Rows live in a
:class:`~prmagic_core.results.ResultsFile` under ``cache_dir``: one file per model, data and
flow-options setting (the file name carries a hash of them, weights included), shared by every
notebook, so a figure whose rows are there never loads the model. A change of weights or of
the code that computes rows gives a new file (see :func:`source_sha1`). A sweep computes only
the trajectories missing from the file; an interrupted sweep keeps what it finished.

Where the cost goes: the refine loop runs once per (baseline, flow setting, seed, episode) and
every selector scores that same trajectory (selectors do not change it); one
:class:`~prmagic_core.models.encoding.Encoder` per lab caches embeddings by content, so the
support, the query and repeated candidate masks are encoded once across settings; a baseline's
prompter (PerSAM-F's 1000-iteration support fit) is prepared once per episode and reused for
every flow setting and seed, with one :class:`~prmagic_core.refine.DecodeMemo` sharing its
decodes on z0 (identical prompts decode identically whatever eta, gamma or seed). Steps are not a sweep axis: the candidates of T' < T steps are the
first T' + 1 of the T-step trajectory (the same seeded draws), and a selector scores each
candidate on its own, so the top-1 among the first T' + 1 is read off the table
(``analysis.picks(table, selector, max_step=T')``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .analysis import COUNTS, KEY, METRICS, candidate_rows, selector_misses, to_frame
from .baselines import make_baseline
from .data.sources import kind_of, load_source
from .evaluation import EPISODE_ERRORS, episode_ids, episode_seed
from .flow import FlowConfig
from .metrics import episode_counts
from .push import ARMS, push
from .models.dino_tiny import dino_tiny_files, matching_fold
from .refine import DecodeMemo, refine
from .results import ResultsFile
from .pipeline import select_final
from .presets import get_preset
from .select import SELECTORS, oracle
from .signals import DECODER, FEATURE, candidate_signals
from .workers import ordered_map, resolve_workers

# 2: rows from a preset (selector evidence, first-shot support); 3: each row carries the
# candidate's zero-pass signals (signal_* columns)
TABLE_VERSION = 3
BACKENDS = ("tiny", "sam")
DEFAULT_ETA = {"object": 1e-3, "part": 1e-4}


# ---------------------------------------------------------------- what a table is made of

@dataclass(frozen=True)
class Setup:
    """The model and the data: what one lab (and every table it writes) is about.

    ``backend="tiny"``: SAM-Tiny (shipped weights unless ``checkpoint``);
    ``backend="sam"``: an official checkpoint of ``model_type`` (``checkpoint`` required).
    ``image_size``: ShapeWorld's side (None: the model's input side, 128 px for SAM-Tiny; the
    release evaluates at 518, ``prmagic evaluate`` at 512); ``fold``: a benchmark's fold, and on
    ShapeWorld the fold whose NOVEL classes the episodes pose (None: every class).
    ``dataset``: ``shapeworld`` (``kind`` object or part), ``folder`` (``data_root`` a folder of
    episodes) or a benchmark of :mod:`prmagic_core.data.benchmarks` (``data_root`` its root).
    ``dinov2_checkpoint``: DINOv2 ViT-L/14 weights for Matcher on official SAM.
    ``matching_encoder``: what Matcher and GF-SAM match with (None: DINOv2 with a checkpoint, else
    :data:`~prmagic_core.baselines.matcher.features.TINY_DEFAULT`; ``dino-tiny`` / ``sam-tiny``
    show what the semantic encoder changes).
    """

    backend: str = "tiny"
    checkpoint: str | None = None
    model_type: str = "vit_b"
    dinov2_checkpoint: str | None = None
    matching_encoder: str | None = None
    dataset: str = "shapeworld"
    data_root: str | None = None
    kind: str = "object"
    fold: int | None = 0
    image_size: int | None = None
    shots: int = 1
    data_seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "sam" and self.checkpoint is None:
            raise ValueError("backend 'sam' needs checkpoint=PATH to an official SAM checkpoint")
        if self.dataset != "shapeworld" and self.data_root is None:
            raise ValueError(f"dataset {self.dataset!r} needs data_root (its directory)")

    @property
    def sam_type(self) -> str:
        return "tiny" if self.backend == "tiny" else self.model_type


@dataclass(frozen=True)
class Sweep:
    """A grid of settings: baselines x etas x gammas x drifts x seeds over the first ``episodes``.

    The other fields are fixed for the whole table (they are part of its file's settings).
    ``drifts=(False,)`` zeroes the gradient term (noise only); ``gammas=(0.0,)`` is drift only;
    ``etas=(0.0,), gammas=(0.0,)`` with ``resampling="fresh"`` is resampling only.
    ``direction``, ``step`` and ``step_size`` size and point the drift (see
    :class:`~prmagic_core.flow.FlowConfig`): one table per choice, :meth:`Lab.sweeps` runs several.
    """

    baselines: tuple = ("persam_f",)
    etas: tuple = (1e-3,)
    gammas: tuple = (0.1,)
    drifts: tuple = (True,)
    seeds: tuple = (0,)
    episodes: int = 8
    steps: int = 5
    clip: float | None = 0.1
    divergence: str = "kl"
    reduction: str = "sum"
    grad_at: str = "z0"
    resampling: str | None = None  # None: the preset's
    selectors: tuple = SELECTORS
    released_point_order: bool = False
    preset: str = "release"
    direction: str = "gradient"
    step: str = "fixed"
    step_size: float | None = None

    def __post_init__(self):
        # Canonical types: the table keys rows by str(value), so 0 and 0.0 must not both occur.
        for name, kind in (("baselines", str), ("etas", float), ("gammas", float), ("drifts", bool), ("seeds", int),
                           ("selectors", str)):
            values = tuple(kind(v) for v in getattr(self, name))
            if not values:
                raise ValueError(f"Sweep.{name} is empty")
            object.__setattr__(self, name, values)
        if self.episodes < 1 or self.steps < 0:
            raise ValueError(f"need episodes >= 1 and steps >= 0, got episodes={self.episodes}, steps={self.steps}")
        unknown = [s for s in self.selectors if s not in SELECTORS]
        if unknown:
            raise ValueError(f"unknown selectors {unknown}; expected some of {SELECTORS}")
        self.flow(self.etas[0], self.gammas[0], self.drifts[0])  # validates the flow options now

    def flow(self, eta: float, gamma: float, drift: bool) -> FlowConfig:
        return FlowConfig(eta=eta, gamma=gamma, clip=self.clip, divergence=self.divergence,
                          reduction=self.reduction, grad_at=self.grad_at, drift=drift, direction=self.direction,
                          step=self.step, step_size=self.step_size)

    def flows(self) -> list:
        """(eta, gamma, drift) of every flow setting of the grid."""
        return [(e, g, d) for e in self.etas for g in self.gammas for d in self.drifts]

    def along(self, arm: str, norm: float) -> "Sweep":
        """This grid with a drift of L2 norm ``norm`` along a direction arm of :data:`~prmagic_core.push.ARMS`
        and no noise (gamma 0): one cell of the direction test."""
        direction, reduction = ARMS[arm]
        return replace(self, gammas=(0.0,), direction=direction, reduction=reduction, step_size=float(norm))

    def rows_of(self, frame: pd.DataFrame, episode_ids) -> pd.DataFrame:
        """The rows of ``frame`` inside this grid and these episodes (a table file may hold more)."""
        if frame.empty:
            return frame
        keep = (frame.baseline.isin(self.baselines) & frame.eta.isin(self.etas) & frame.gamma.isin(self.gammas)
                & frame.drift.isin(self.drifts) & frame.seed.isin(self.seeds) & frame.episode.isin(list(episode_ids)))
        return frame[keep].sort_values(list(KEY)).reset_index(drop=True)

    def table_settings(self) -> dict:
        """The fields fixed for a table (everything but the grid axes and the episode count)."""
        axes = {"baselines", "etas", "gammas", "drifts", "seeds", "episodes"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in axes}


_FINGERPRINTS: dict = {}
PACKAGE = Path(__file__).resolve().parent
# Modules whose edits do not invalidate cached tables: those that only read, plot or dispatch,
# and this module itself, whose row-building code is versioned by TABLE_VERSION instead
# (bump it when _rows or run_trajectory change what a row holds).
PRESENTATION = {"experiments.py", "analysis.py", "study.py", "toy.py", "viz.py", "figures.py", "bench.py", "cli.py"}


def source_sha1() -> str:
    """SHA-1 of the package's code that computes rows (models, baselines, flow, loop, selectors, data):
    a table computed by other code is recomputed, never silently reused."""
    digest = hashlib.sha1()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name in PRESENTATION:
            continue
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def file_sha1(path) -> str:
    """SHA-1 of a file's bytes (remembered per path, size and mtime: official checkpoints are GBs)."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FINGERPRINTS:
        digest = hashlib.sha1()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _FINGERPRINTS[memo] = digest.hexdigest()
    return _FINGERPRINTS[memo]


# ---------------------------------------------------------------- masks in a table cell

def mask_to_text(mask: np.ndarray) -> str:
    """``"HxW:<base64>"``: the mask's bits, packed row-major and zlib-compressed (a few hundred bytes)."""
    mask = np.asarray(mask, dtype=bool)
    packed = zlib.compress(np.packbits(mask.ravel()).tobytes(), 9)
    return f"{mask.shape[0]}x{mask.shape[1]}:" + base64.b64encode(packed).decode("ascii")


def text_to_mask(text: str) -> np.ndarray:
    """The mask of :func:`mask_to_text`."""
    shape, _, payload = text.partition(":")
    h, w = (int(v) for v in shape.split("x"))
    bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(payload)), dtype=np.uint8), count=h * w)
    return bits.astype(bool).reshape(h, w)


def prompts_json(prompts) -> str:
    return json.dumps([[round(float(x), 2), round(float(y), 2), int(l)]
                       for (x, y), l in zip(prompts.coords, prompts.labels)])


def prompts_array(text: str) -> np.ndarray:
    """(N, 3) x, y, label of a table's ``prompts`` cell."""
    return np.array(json.loads(text), dtype=np.float64).reshape(-1, 3)


# ---------------------------------------------------------------- one trajectory, scored

# Zero-pass signals recorded for every candidate beside the selectors' scores, so every rule of
# the selector family (select.FAMILY) is scored offline from a table (prmagic_core.study).
RECORDED_SIGNALS = FEATURE + DECODER


@dataclass
class Scored:
    """A trajectory with every selector's scores, the recorded signals and the oracle's choice."""

    trajectory: object
    selections: dict
    oracle: object
    signals: dict = field(default_factory=dict)


def run_trajectory(prompter, encoder, episode, flow: FlowConfig, seed: int, steps: int, resampling: str | None,
                   selectors, memo: DecodeMemo | None = None, preset: str = "release") -> Scored:
    """Refine once (seeded as ``prmagic evaluate`` seeds the episode), then score it with every selector.

    ``memo`` (one per prompter) shares the decodes on z0 between the flow settings and seeds of an episode.
    """
    if episode.query_mask is None:
        raise ValueError(f"episode {episode.name} has no query mask to score against")
    generator = torch.Generator().manual_seed(episode_seed(seed, episode.name))
    trajectory = refine(prompter, steps, flow, generator, resampling or get_preset(preset).resampling, memo=memo)
    selections = {name: select_final(name, trajectory, prompter, encoder, episode, preset) for name in selectors}
    signals = candidate_signals(RECORDED_SIGNALS, trajectory, encoder, prompter.query, episode.support_images,
                                episode.support_masks)
    return Scored(trajectory, selections, oracle(trajectory.candidates, episode.query_mask), signals)


def _rows(scored: Scored, episode, baseline: str, flow_key: tuple, seed: int) -> list:
    eta, gamma, drift = flow_key
    rows = []
    for t, step in enumerate(scored.trajectory.steps):
        row = {"baseline": baseline, "eta": eta, "gamma": gamma, "drift": drift, "seed": seed,
               "episode": episode.name, "step": t, "class": episode.class_name, "kind": episode.kind,
               "status": "ok", "reason": "", "iou": scored.oracle.scores[t],
               **dict(zip(COUNTS, episode_counts(step.mask, episode.query_mask))),
               "oracle": int(scored.oracle.index == t)}
        for name, selection in scored.selections.items():
            row[f"score_{name}"] = selection.scores[t]
            row[f"chosen_{name}"] = int(selection.index == t)
        for name, values in scored.signals.items():
            row[f"signal_{name}"] = _blank(None if np.isnan(values[t]) else float(values[t]))
        row.update({"d_phi": _blank(step.d_phi), "drift_norm": _blank(step.drift_norm),
                    "noise_norm": _blank(step.noise_norm), "prompts": prompts_json(step.prompts),
                    "mask": mask_to_text(step.mask)})
        rows.append(row)
    return rows


def _blank(value):
    return "" if value is None else value


def _failed_row(baseline: str, flow_key: tuple, seed: int, episode_id: str, steps: int, class_name: str,
                err: Exception) -> dict:
    eta, gamma, drift = flow_key
    return {"baseline": baseline, "eta": eta, "gamma": gamma, "drift": drift, "seed": seed, "episode": episode_id,
            "step": steps, "class": class_name, "status": "failed", "reason": f"{type(err).__name__}: {err}"}


# ---------------------------------------------------------------- the lab: model, data, tables

class Lab:
    """One model and one data source; loads the model only when a table lacks rows.

    ``workers``: processes that compute a sweep's missing episodes (default: every core on a CPU;
    see :mod:`prmagic_core.workers`); the table is the one a single process writes.
    """

    def __init__(self, setup: Setup, cache_dir="build/cache", flush_every: int = 32, workers: int | None = None):
        self.setup = setup
        self.cache_dir = Path(cache_dir)
        self.flush_every = flush_every
        self.workers = workers
        self._sam = None
        self._encoder = None
        self._episodes = None
        self._shapeworld: dict = {}
        self._baselines: dict = {}

    # -- model
    @property
    def device(self) -> torch.device:
        from .models.loading import resolve_device

        return resolve_device(self.setup.device)

    @property
    def weights(self) -> Path:
        from .models.tiny import TINY_WEIGHTS

        return Path(self.setup.checkpoint) if self.setup.checkpoint else TINY_WEIGHTS

    @property
    def sam(self):
        if self._sam is None:
            from .models.loading import load_sam

            self._sam = load_sam(self.setup.sam_type, self.setup.checkpoint, device=str(self.device))
        return self._sam

    @property
    def encoder(self):
        if self._encoder is None:
            from .models.encoding import Encoder

            # Small embeddings for SAM-Tiny (~0.3 MB each); official SAM's are 4 MB plus the image.
            tiny = self.setup.backend == "tiny"
            self._encoder = Encoder(self.sam, cache_size=512 if tiny else 64)
        return self._encoder

    @property
    def embedding_size(self) -> int:
        """Elements of one image embedding: the n of the flow's sqrt(n) norms (loads the model)."""
        encoder = self.sam.prompt_encoder
        return encoder.embed_dim * encoder.image_embedding_size[0] * encoder.image_embedding_size[1]

    # -- data
    @property
    def image_size(self) -> int:
        """ShapeWorld's side: ``Setup.image_size``, else the model's input side (128 SAM-Tiny, 1024 official SAM)."""
        if self.setup.image_size is not None:
            return self.setup.image_size
        return 128 if self.setup.backend == "tiny" else 1024

    @property
    def dino_tiny_fold(self) -> int:
        return matching_fold(self.setup.dataset, self.setup.fold)

    @property
    def dino_tiny_weights(self) -> Path:
        return dino_tiny_files(self.dino_tiny_fold)[0]

    def _source(self):
        s = self.setup
        if self._episodes is None and s.dataset != "shapeworld":
            self._episodes = load_source(s.dataset, s.data_root, fold=s.fold or 0, shots=s.shots, seed=s.data_seed)
        return self._episodes

    @property
    def kind(self) -> str:
        source = self._source()
        return self.setup.kind if source is None else kind_of(source, self.setup.kind)

    def episode(self, index: int):
        """The ``index``-th episode (ShapeWorld's are generated on demand and remembered)."""
        source = self._source()
        if source is not None:
            return source[index]
        if index not in self._shapeworld:
            from .data import shapeworld

            s = self.setup
            self._shapeworld[index] = shapeworld.episode(s.data_seed, index, s.kind, s.shots, self.image_size, s.fold)
        return self._shapeworld[index]

    def episode_ids(self, n: int) -> list:
        """Ids of the first ``n`` episodes (fewer when the source has fewer)."""
        source = self._source()
        if source is None:
            return [self.episode(i).name for i in range(n)]
        return episode_ids(source, n)

    def episode_by_id(self, episode_id: str, n: int):
        return self.episode(self.episode_ids(n).index(episode_id))

    # -- tables
    def settings(self, sweep: Sweep) -> dict:
        """What a table's rows depend on besides their key: model, weights, data, device, fixed flow options."""
        s = self.setup
        dino_tiny = self.dino_tiny_weights
        return {
            "table_version": TABLE_VERSION, "backend": s.backend, "model_type": s.sam_type,
            "weights_sha1": file_sha1(self.weights), "code_sha1": source_sha1(),
            "dinov2_sha1": file_sha1(s.dinov2_checkpoint) if s.dinov2_checkpoint else None, "dataset": s.dataset,
            "matching_encoder": s.matching_encoder,
            "dino_tiny_sha1": file_sha1(dino_tiny) if dino_tiny.is_file() else None,
            "data_root": str(s.data_root) if s.data_root else None, "kind": self.kind, "fold": s.fold,
            "shots": s.shots, "data_seed": s.data_seed, "image_size": self.image_size,
            "device": self.device.type, **sweep.table_settings(),
        }

    def table_path(self, sweep: Sweep) -> Path:
        settings = self.settings(sweep)
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.setup.dataset}-{self.kind}-{self.setup.sam_type}-T{sweep.steps}-{digest}.csv"

    def baseline(self, name: str, kind: str, released_point_order: bool = False, preset: str = "release"):
        """One baseline object per name and options (Matcher keeps its DINOv2 loaded across episodes)."""
        key = (name, kind, released_point_order, preset)
        if key not in self._baselines:
            self._baselines[key] = make_baseline(name, kind=kind, released_point_order=released_point_order,
                                                 dinov2_checkpoint=self.setup.dinov2_checkpoint,
                                                 settings=preset, benchmark=self.setup.dataset,
                                                 matching_encoder=self.setup.matching_encoder,
                                                 dino_tiny_fold=self.dino_tiny_fold)
        return self._baselines[key]

    def prepare(self, baseline: str, episode, released_point_order: bool = False, preset: str = "release"):
        return self.baseline(baseline, episode.kind, released_point_order, preset).prepare(
            self.encoder, episode.support_images, episode.support_masks, episode.query_image)

    def sweep(self, sweep: Sweep, progress: bool = True) -> pd.DataFrame:
        """The table of ``sweep``: rows already on disk are read, missing trajectories computed."""
        return self.sweeps([sweep], progress)[0]

    def sweeps(self, sweeps, progress: bool = True) -> list:
        """The tables of several sweeps (one file each), computed episode by episode: a baseline's
        prompter and its decodes on z0 are prepared once per episode for all of them."""
        sweeps = list(sweeps)
        tables = [ResultsFile(self.table_path(s), self.settings(s), key=KEY) for s in sweeps]
        ids = self.episode_ids(max(s.episodes for s in sweeps))
        todo = {}  # (baseline, episode index) -> [(sweep index, flow key, seed)] not on disk yet
        for k, (sweep, table) in enumerate(zip(sweeps, tables)):
            for b in sweep.baselines:
                for i, eid in enumerate(ids[:sweep.episodes]):
                    todo.setdefault((b, i), []).extend(
                        (k, f, seed) for f in sweep.flows() for seed in sweep.seeds
                        if not table.done(b, *f, seed, eid, sweep.steps))
        total = sum(len(v) for v in todo.values())
        pending, last_flush = [[] for _ in sweeps], time.monotonic()

        def flush():
            nonlocal last_flush
            for table, rows in zip(tables, pending):
                table.append(rows)
                rows.clear()
            last_flush = time.monotonic()

        def episode_rows(unit):
            (baseline, index), missing = unit
            return self._episode_rows(baseline, index, ids[index], missing, sweeps)

        units = [unit for unit in todo.items() if unit[1]]
        workers = resolve_workers(self.workers, self.device)
        if workers == 1:  # trajectory by trajectory, so an interruption loses at most the one in flight
            trajectories = (item for unit in units for item in episode_rows(unit))
        else:  # episode by episode, each in a worker
            finished = ordered_map(lambda unit: list(episode_rows(unit)), units, workers)
            trajectories = (item for episode in finished for item in episode)
        try:
            names = ", ".join(self.table_path(s).name for s in sweeps[:2]) + (", ..." if len(sweeps) > 2 else "")
            with tqdm(total=total, disable=not progress or total == 0, desc=f"sweep {names}") as bar:
                for k, rows in trajectories:
                    pending[k].extend(rows)
                    bar.update(1)
                    if (sum(map(len, pending)) >= self.flush_every * (sweeps[k].steps + 1)
                            or time.monotonic() - last_flush > 30):
                        flush()
        finally:  # an interrupted sweep keeps every trajectory it finished
            flush()
        return [sweep.rows_of(to_frame(table.rows), ids[:sweep.episodes]) for sweep, table in zip(sweeps, tables)]

    def _episode_rows(self, baseline: str, index: int, episode_id: str, missing: list, sweeps: list):
        """Yields (sweep index, rows) of each missing trajectory of one episode; the prompter is prepared
        once for all (once per point order and preset)."""
        if not missing:
            return
        class_name, prepared = "?", {}
        for k, flow_key, seed in missing:
            sweep = sweeps[k]
            try:
                episode = self.episode(index)
                class_name = episode.class_name
                options = (sweep.released_point_order, sweep.preset)
                if options not in prepared:  # a failed preparation is not retried
                    try:
                        prompter = self.prepare(baseline, episode, *options)
                        prepared[options] = prompter, DecodeMemo(prompter)
                    except EPISODE_ERRORS as err:
                        prepared[options] = err
                if isinstance(prepared[options], Exception):
                    raise prepared[options]
                prompter, memo = prepared[options]
                scored = run_trajectory(prompter, self.encoder, episode, sweep.flow(*flow_key), seed, sweep.steps,
                                        sweep.resampling, sweep.selectors, memo, sweep.preset)
                yield k, _rows(scored, episode, baseline, flow_key, seed)
            except EPISODE_ERRORS as err:
                yield k, [_failed_row(baseline, flow_key, seed, episode_id, sweep.steps, class_name, err)]

    def pushes(self, baseline: str, n_episodes: int, norms, seeds=(0,), arms=tuple(ARMS), reduction: str = "sum",
               top_fraction: float = 0.01, released_point_order: bool = False, preset: str = "release",
               progress: bool = True) -> pd.DataFrame:
        """Rows of :func:`prmagic_core.push.push` (one step from z0 per arm and norm) for each seed and
        episode, with ``baseline``, ``seed``, ``episode``, ``class``; cached and resumable like a sweep."""
        sweep = Sweep(baselines=(baseline,), reduction=reduction, released_point_order=released_point_order,
                      preset=preset)
        settings = {**self.settings(sweep), "probe": "push", "baseline": baseline, "norms": [float(n) for n in norms],
                    "arms": list(arms), "top_fraction": float(top_fraction)}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        s = self.setup
        file = ResultsFile(self.cache_dir / f"push-{s.dataset}-{self.kind}-{s.sam_type}-{baseline}-{digest}.csv",
                           settings, key=("seed", "episode"))
        ids = self.episode_ids(n_episodes)
        for index, episode_id in enumerate(tqdm(ids, disable=not progress, desc=f"push {baseline}")):
            missing = [seed for seed in seeds if not file.done(seed, episode_id)]
            if not missing:
                continue
            try:
                episode = self.episode(index)
                prompter = self.prepare(baseline, episode, released_point_order, preset)
                memo = DecodeMemo(prompter)
                for seed in missing:
                    generator = torch.Generator().manual_seed(episode_seed(seed, episode.name))
                    rows = push(prompter, memo, episode.query_mask, norms, arms, generator, reduction, top_fraction)
                    file.append([{"baseline": baseline, "seed": seed, "episode": episode_id,
                                  "class": episode.class_name, "status": "ok", **row} for row in rows])
            except EPISODE_ERRORS as err:
                file.append([{"baseline": baseline, "seed": seed, "episode": episode_id, "status": "failed",
                              "reason": f"{type(err).__name__}: {err}"} for seed in missing if not file.done(seed, episode_id)])
        frame = pd.DataFrame(file.rows)
        frame = frame[frame.seed.astype(int).isin(seeds) & frame.episode.isin(ids)]
        text = {"baseline", "episode", "class", "arm", "status", "reason"}
        return frame.apply(lambda c: c if c.name in text else pd.to_numeric(c.replace("", np.nan))).reset_index(drop=True)

    def trace(self, baseline: str, index: int, eta: float, gamma: float = 0.1, drift: bool = True, seed: int = 0,
              sweep: Sweep = Sweep()) -> "Trace":
        """Everything behind one trajectory (similarity maps included), cached as an .npz file."""
        settings = {**self.settings(sweep), "baseline": baseline, "index": int(index), "eta": float(eta),
                    "gamma": float(gamma), "drift": bool(drift), "seed": int(seed)}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        path = self.cache_dir / f"trace-{baseline}-{index}-{digest}.npz"
        if path.exists():
            return Trace.load(path, settings)
        episode = self.episode(index)
        scored = run_trajectory(self.prepare(baseline, episode, sweep.released_point_order, sweep.preset),
                                self.encoder, episode,
                                sweep.flow(float(eta), float(gamma), bool(drift)), int(seed), sweep.steps,
                                sweep.resampling, sweep.selectors, preset=sweep.preset)
        trace = Trace.from_scored(scored, episode, settings)
        trace.save(path)
        return trace


@dataclass
class Trace:
    """One trajectory for the walkthrough: episode, similarity maps, prompts, candidates, scores."""

    settings: dict
    support_image: np.ndarray
    support_mask: np.ndarray
    query_image: np.ndarray
    query_mask: np.ndarray
    similarities: np.ndarray  # (T+1, H, W)
    masks: np.ndarray  # (T+1, H, W) bool
    prompts: list  # T+1 arrays (N, 3): x, y, label
    ious: np.ndarray  # (T+1,)
    scores: dict  # selector -> (T+1,)
    d_phi: np.ndarray  # (T,)
    drift_norm: np.ndarray  # (T,)
    noise_norm: np.ndarray  # (T,)
    class_name: str = ""
    episode: str = ""

    @property
    def steps(self) -> int:
        return len(self.masks) - 1

    @property
    def oracle_index(self) -> int:
        return int(np.argmax(self.ious))

    def chosen(self, selector: str) -> int:
        return int(np.argmax(self.scores[selector]))

    @classmethod
    def from_scored(cls, scored: Scored, episode, settings: dict) -> "Trace":
        steps = scored.trajectory.steps
        moves = steps[:-1]
        return cls(
            settings=settings, support_image=episode.support_images[0], support_mask=episode.support_masks[0],
            query_image=episode.query_image, query_mask=episode.query_mask,
            similarities=np.stack([s.similarity.detach().float().cpu().numpy() for s in steps]),
            masks=np.stack([s.mask for s in steps]),
            prompts=[np.column_stack([s.prompts.coords, s.prompts.labels]) for s in steps],
            ious=np.asarray(scored.oracle.scores), scores={k: np.asarray(v.scores) for k, v in scored.selections.items()},
            d_phi=np.array([s.d_phi for s in moves], dtype=float), drift_norm=np.array([s.drift_norm for s in moves], dtype=float),
            noise_norm=np.array([s.noise_norm for s in moves], dtype=float),
            class_name=episode.class_name, episode=episode.name,
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts = np.concatenate([np.column_stack([np.full(len(p), t), p]) for t, p in enumerate(self.prompts)])
        arrays = {k: v for k, v in asdict(self).items() if isinstance(v, np.ndarray)}
        meta = {"settings": self.settings, "selectors": list(self.scores), "class_name": self.class_name,
                "episode": self.episode}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, prompts=prompts, meta=np.array(json.dumps(meta)),
                            scores=np.stack([self.scores[k] for k in self.scores]), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, settings: dict) -> "Trace":
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            if meta["settings"] != json.loads(json.dumps(settings)):
                raise ValueError(f"{path} was traced with other settings; delete it to recompute")
            arrays = {f.name: data[f.name] for f in fields(cls) if f.name in data.files and f.name not in ("prompts", "scores")}
            flat = data["prompts"]
            prompts = [flat[flat[:, 0] == t, 1:] for t in range(len(arrays["masks"]))]
            scores = dict(zip(meta["selectors"], data["scores"]))
        return cls(settings=meta["settings"], prompts=prompts, scores=scores, class_name=meta["class_name"],
                   episode=meta["episode"], **arrays)


# ---------------------------------------------------------------- a table's rows back as pictures

def miss_cases(lab: "Lab", table: pd.DataFrame, selector: str, k: int, n_episodes: int) -> list:
    """The ``k`` worst selector misses as panels for :func:`prmagic_core.viz.misses_figure` (masks from the table)."""
    misses = selector_misses(table, selector, k).rename(columns={f"step_T {selector}": "step_T"})
    return miss_panels(lab, table, misses, selector, n_episodes)


def miss_panels(lab: "Lab", table: pd.DataFrame, misses: pd.DataFrame, selector: str, n_episodes: int) -> list:
    """Panels of :func:`prmagic_core.viz.misses_figure` for the trajectories of ``misses`` (one row
    each, with the steps ``step_T`` and ``step_O`` chosen), masks and prompts read from ``table``."""
    cases = []
    for miss in misses.to_dict("records"):
        rows = candidate_rows(table, miss).set_index("step")
        episode = lab.episode_by_id(miss["episode"], n_episodes)
        picks_ = {"B": 0, f"T {selector}": int(miss["step_T"]), "O": int(miss["step_O"])}
        cases.append({
            "image": episode.query_image, "truth": episode.query_mask,
            "masks": {label: text_to_mask(rows.loc[t, "mask"]) for label, t in picks_.items()},
            "prompts": {label: prompts_array(rows.loc[t, "prompts"]) for label, t in picks_.items()},
            "titles": {label: f"step {t}, IoU {rows.loc[t, 'iou']:.3f}" for label, t in picks_.items()},
            "title": f"{miss['class']} ({miss['baseline']}, eta {miss['eta']:g}, seed {miss['seed']})",
        })
    return cases


def study_tables(setup: Setup, baselines, kinds, n_dev: int, n_test: int, seeds, steps: int = 5,
                 dev_seed: int = 1, test_seed: int = 0, cache_dir="build/cache", etas: dict | None = None,
                 progress: bool = True) -> dict:
    """The selector study's tables: ``{(baseline, kind): (development, test)}``.

    Development: the first ``n_dev`` episodes of episode seed ``dev_seed``, noise seed ``seeds[0]``;
    test: the first ``n_test`` of ``test_seed`` (other scenes), every noise seed in ``seeds``;
    eta: ``etas[kind]``, by default the kind's (1e-3 objects, 1e-4 parts). The default test episodes
    are episode seed 0's, those of the headline B/T/O cells (notebooks 04, 06): their tables are
    shared, so the study computes only its development trajectories when they are cached.
    """
    etas = {**DEFAULT_ETA, **(etas or {})}
    tables = {}
    for kind in kinds:
        labs = [Lab(replace(setup, kind=kind, data_seed=s), cache_dir) for s in (dev_seed, test_seed)]
        for baseline in baselines:
            def sweep(n, noise):
                return Sweep(baselines=(baseline,), etas=(etas[kind],), seeds=tuple(noise), episodes=n, steps=steps)

            tables[(baseline, kind)] = (labs[0].sweep(sweep(n_dev, seeds[:1]), progress),
                                        labs[1].sweep(sweep(n_test, seeds), progress))
    return tables


# ---------------------------------------------------------------- headline numbers

def _check_finite(value, where: str):
    if isinstance(value, dict):
        return {str(k): _check_finite(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_check_finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"headline number {where} is not finite ({value})")
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"headline value {where} has unsupported type {type(value).__name__}")


def write_headline(name: str, numbers: dict, settings: dict, figures, out_dir) -> Path:
    """``<out_dir>/<name>.json``: the numbers a notebook claims, its settings, its figures and
    what each metric means.

    Every number must be finite: a NaN in a headline is an error here, not a blank in a table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"notebook": name, "numbers": _check_finite(numbers, "numbers"),
              "settings": _check_finite(settings, "settings"), "figures": list(figures), "metrics": METRICS}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
