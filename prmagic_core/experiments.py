"""Sweeps of PR-MaGIC settings into one tidy table, cached and resumable, and the numbers figures plot.

    lab = Lab(Setup(backend="tiny", dataset="shapeworld"), cache_dir="build/cache")
    table = lab.sweep(Sweep(baselines=("persam_f",), etas=(1e-2, 1e-3), seeds=(0,), episodes=8))
    bto(table)                  # B / T per selector / O per setting and seed, both metrics
    step_metrics(table)         # the mIoU of a fixed step, per setting, seed and step

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
(``picks(table, selector, max_step=T')``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .baselines import make_baseline
from .evaluation import EPISODE_ERRORS, episode_ids, episode_seed
from .flow import FlowConfig, flow_step
from .metrics import METRIC_NAMES, IoUAccumulator, episode_counts
from .refine import DecodeMemo, refine
from .results import ResultsFile
from .select import SELECTORS, oracle, select

TABLE_VERSION = 1
SETTING = ("baseline", "eta", "gamma", "drift")
TRAJECTORY = SETTING + ("seed", "episode")
KEY = TRAJECTORY + ("step",)
COUNTS = ("i_fg", "u_fg", "i_bg", "u_bg")
BACKENDS = ("tiny", "sam")
DEFAULT_ETA = {"object": 1e-3, "part": 1e-4}
METRICS = {  # what each number of :func:`metrics` means; headline records carry it
    "miou": METRIC_NAMES["miou"],
    "mean_iou": "mean per-episode foreground IoU % (each episode's IoU, averaged over episodes)",
    "episode_fb_miou": METRIC_NAMES["episode_fb_miou"],
    "fb_iou": METRIC_NAMES["fb_iou"],
}
METRIC_LABELS = {"miou": "class-wise mIoU %", "mean_iou": "mean per-episode IoU %",
                 "episode_fb_miou": "per-episode FB mIoU %", "fb_iou": "FB-IoU %"}  # axis labels

# The paper's numbers (SPEC section 6): 1-shot class-wise mIoU %, (B, T, O).
PAPER_BTO = {
    ("persam_f", "fss"): (58.41, 67.19, 72.45), ("persam_f", "coco"): (44.64, 46.83, 51.74),
    ("persam_f", "lvis"): (42.37, 44.48, 47.29), ("persam_f", "paco"): (39.60, 40.72, 43.39),
    ("persam_f", "pascal_part"): (42.72, 43.87, 46.43), ("persam_f", "dis5k"): (46.82, 49.99, 53.46),
    ("matcher", "fss"): (92.08, 92.06, 93.55), ("matcher", "coco"): (69.53, 71.23, 76.14),
    ("matcher", "lvis"): (59.39, 61.52, 64.75), ("matcher", "paco"): (50.27, 54.08, 56.71),
    ("matcher", "pascal_part"): (54.76, 58.28, 61.13), ("matcher", "dis5k"): (46.65, 55.08, 58.10),
}
PAPER_OPTIMAL_STEP = {"mean": 3.0, "std": 1.8}  # Tab. 2: mean ~3, std ~1.7-1.8


# ---------------------------------------------------------------- what a table is made of

@dataclass(frozen=True)
class Setup:
    """The model and the data: what one lab (and every table it writes) is about.

    ``backend="tiny"``: SAM-Tiny (shipped weights unless ``checkpoint``) on 128-px episodes;
    ``backend="sam"``: an official checkpoint of ``model_type`` (``checkpoint`` required).
    ``dataset``: ``shapeworld`` (``kind`` object or part), ``folder`` (``data_root`` a folder of
    episodes) or a benchmark of :mod:`prmagic_core.data.benchmarks` (``data_root`` its root).
    ``dinov2_checkpoint``: DINOv2 ViT-L/14 weights for Matcher on official SAM (on SAM-Tiny
    Matcher matches SAM features and needs none).
    """

    backend: str = "tiny"
    checkpoint: str | None = None
    model_type: str = "vit_b"
    dinov2_checkpoint: str | None = None
    dataset: str = "shapeworld"
    data_root: str | None = None
    kind: str = "object"
    fold: int = 0
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
    ``drifts=(False,)`` zeroes the gradient term (noise only); ``gammas=(0.0,)`` is drift only.
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
    resampling: str = "fixed"
    selectors: tuple = SELECTORS
    released_point_order: bool = False

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
                          reduction=self.reduction, grad_at=self.grad_at, drift=drift)

    def flows(self) -> list:
        """(eta, gamma, drift) of every flow setting of the grid."""
        return [(e, g, d) for e in self.etas for g in self.gammas for d in self.drifts]

    def table_settings(self) -> dict:
        """The fields fixed for a table (everything but the grid axes and the episode count)."""
        axes = {"baselines", "etas", "gammas", "drifts", "seeds", "episodes"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in axes}


_FINGERPRINTS: dict = {}
PACKAGE = Path(__file__).resolve().parent
# Modules that only read, plot or dispatch: editing them does not change a row of a table.
PRESENTATION = {"experiments.py", "viz.py", "figures.py", "bench.py", "cli.py"}


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

@dataclass
class Scored:
    """A trajectory with every selector's scores and the oracle's choice."""

    trajectory: object
    selections: dict
    oracle: object


def run_trajectory(prompter, encoder, episode, flow: FlowConfig, seed: int, steps: int, resampling: str,
                   selectors, memo: DecodeMemo | None = None) -> Scored:
    """Refine once (seeded as ``prmagic evaluate`` seeds the episode), then score it with every selector.

    ``memo`` (one per prompter) shares the decodes on z0 between the flow settings and seeds of an episode.
    """
    if episode.query_mask is None:
        raise ValueError(f"episode {episode.name} has no query mask to score against")
    generator = torch.Generator().manual_seed(episode_seed(seed, episode.name))
    trajectory = refine(prompter, steps, flow, generator, resampling, memo=memo)
    selections = {name: select(name, trajectory.candidates, encoder, prompter.query, episode.support_images,
                               episode.support_masks) for name in selectors}
    return Scored(trajectory, selections, oracle(trajectory.candidates, episode.query_mask))


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
    """One model and one data source; loads the model only when a table lacks rows."""

    def __init__(self, setup: Setup, cache_dir="build/cache", flush_every: int = 32):
        self.setup = setup
        self.cache_dir = Path(cache_dir)
        self.flush_every = flush_every
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
            self._encoder = Encoder(self.sam, cache_size=512 if tiny else 64, batch_size=8 if tiny else 4)
        return self._encoder

    # -- data
    @property
    def image_size(self) -> int:
        """ShapeWorld's side: the model's input side (128 for SAM-Tiny, 1024 for official SAM)."""
        return 128 if self.setup.backend == "tiny" else 1024

    def _source(self):
        s = self.setup
        if self._episodes is None and s.dataset != "shapeworld":
            if s.dataset == "folder":
                from .data.folder import load_episodes

                self._episodes = load_episodes(s.data_root)
            else:
                from .data.benchmarks import load_benchmark

                self._episodes = load_benchmark(s.dataset, s.data_root, fold=s.fold, shots=s.shots, seed=s.data_seed)
        return self._episodes

    @property
    def kind(self) -> str:
        source = self._source()
        if source is None:
            return self.setup.kind
        return getattr(source, "kind", None) or (source[0].kind if len(source) else self.setup.kind)

    def episode(self, index: int):
        """The ``index``-th episode (ShapeWorld's are generated on demand and remembered)."""
        source = self._source()
        if source is not None:
            return source[index]
        if index not in self._shapeworld:
            from .data import shapeworld

            s = self.setup
            self._shapeworld[index] = shapeworld.episode(s.data_seed, index, s.kind, s.shots, self.image_size)
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
        return {
            "table_version": TABLE_VERSION, "backend": s.backend, "model_type": s.sam_type,
            "weights_sha1": file_sha1(self.weights), "code_sha1": source_sha1(),
            "dinov2_sha1": file_sha1(s.dinov2_checkpoint) if s.dinov2_checkpoint else None, "dataset": s.dataset,
            "data_root": str(s.data_root) if s.data_root else None, "kind": self.kind, "fold": s.fold,
            "shots": s.shots, "data_seed": s.data_seed, "image_size": self.image_size,
            "device": self.device.type, **sweep.table_settings(),
        }

    def table_path(self, sweep: Sweep) -> Path:
        settings = self.settings(sweep)
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.setup.dataset}-{self.kind}-{self.setup.sam_type}-T{sweep.steps}-{digest}.csv"

    def baseline(self, name: str, kind: str, released_point_order: bool = False):
        """One baseline object per name and options (Matcher keeps its DINOv2 loaded across episodes)."""
        key = (name, kind, released_point_order)
        if key not in self._baselines:
            from .baselines.matcher import BENCHMARK_PRESETS

            self._baselines[key] = make_baseline(name, kind=kind, released_point_order=released_point_order,
                                                 dinov2_checkpoint=self.setup.dinov2_checkpoint,
                                                 preset=BENCHMARK_PRESETS.get(self.setup.dataset))
        return self._baselines[key]

    def prepare(self, baseline: str, episode, released_point_order: bool = False):
        return self.baseline(baseline, episode.kind, released_point_order).prepare(
            self.encoder, episode.support_images, episode.support_masks, episode.query_image)

    def sweep(self, sweep: Sweep, progress: bool = True) -> pd.DataFrame:
        """The table of ``sweep``: rows already on disk are read, missing trajectories computed."""
        table = ResultsFile(self.table_path(sweep), self.settings(sweep), key=KEY)
        ids = self.episode_ids(sweep.episodes)
        combos = [(f, seed) for f in sweep.flows() for seed in sweep.seeds]
        todo = {(b, i): [c for c in combos if not table.done(b, *c[0], c[1], eid, sweep.steps)]
                for b in sweep.baselines for i, eid in enumerate(ids)}
        total = sum(len(v) for v in todo.values())
        pending, last_flush = [], time.monotonic()

        def flush():
            nonlocal pending, last_flush
            table.append(pending)
            pending, last_flush = [], time.monotonic()

        try:
            with tqdm(total=total, disable=not progress or total == 0, desc=f"sweep {self.table_path(sweep).name}") as bar:
                for (baseline, index), missing in todo.items():
                    for rows in self._episode_rows(baseline, index, ids[index], missing, sweep):
                        pending.extend(rows)
                        bar.update(1)
                        if len(pending) >= self.flush_every * (sweep.steps + 1) or time.monotonic() - last_flush > 30:
                            flush()
        finally:  # an interrupted sweep keeps every trajectory it finished
            flush()
        return select_rows(to_frame(table.rows), sweep, ids)

    def _episode_rows(self, baseline: str, index: int, episode_id: str, missing: list, sweep: Sweep):
        """Yields the rows of each missing trajectory of one episode; the prompter is prepared once for all."""
        if not missing:
            return
        class_name = "?"
        try:
            episode = self.episode(index)
            class_name = episode.class_name
            prompter = self.prepare(baseline, episode, sweep.released_point_order)
            memo = DecodeMemo(prompter)
        except EPISODE_ERRORS as err:
            for flow_key, seed in missing:
                yield [_failed_row(baseline, flow_key, seed, episode_id, sweep.steps, class_name, err)]
            return
        for flow_key, seed in missing:
            try:
                scored = run_trajectory(prompter, self.encoder, episode, sweep.flow(*flow_key), seed, sweep.steps,
                                        sweep.resampling, sweep.selectors, memo)
                yield _rows(scored, episode, baseline, flow_key, seed)
            except EPISODE_ERRORS as err:
                yield [_failed_row(baseline, flow_key, seed, episode_id, sweep.steps, class_name, err)]

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
        scored = run_trajectory(self.prepare(baseline, episode, sweep.released_point_order), self.encoder, episode,
                                sweep.flow(float(eta), float(gamma), bool(drift)), int(seed), sweep.steps,
                                sweep.resampling, sweep.selectors)
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


# ---------------------------------------------------------------- table -> numbers (pure)

_NUMERIC = ("eta", "gamma", "seed", "step", "iou", *COUNTS, "oracle", "d_phi", "drift_norm", "noise_norm")


def to_frame(rows) -> pd.DataFrame:
    """A typed DataFrame from table rows (dicts of strings, as a ResultsFile holds them)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    for column in frame.columns:
        if column in _NUMERIC or column.startswith(("score_", "chosen_")):
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan))
    frame["drift"] = frame["drift"].astype(str) == "True"
    return frame


def select_rows(frame: pd.DataFrame, sweep: Sweep, episode_ids) -> pd.DataFrame:
    """The rows of ``frame`` inside ``sweep``'s grid and episodes (a table file may hold more)."""
    if frame.empty:
        return frame
    keep = (frame.baseline.isin(sweep.baselines) & frame.eta.isin(sweep.etas) & frame.gamma.isin(sweep.gammas)
            & frame.drift.isin(sweep.drifts) & frame.seed.isin(sweep.seeds) & frame.episode.isin(list(episode_ids)))
    return frame[keep].sort_values(list(KEY)).reset_index(drop=True)


def ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.status == "ok"]


def failures(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.status != "ok"]


def picks(table: pd.DataFrame, how, max_step: int | None = None) -> pd.DataFrame:
    """One row per trajectory: the candidate ``how`` chooses among steps <= ``max_step``.

    ``how``: ``"baseline"`` (step 0, "B"), ``"oracle"`` (highest IoU, "O"), a selector name
    (highest score, "T"), or an int (that fixed step). Ties go to the earliest step.
    """
    t = ok(table)
    if max_step is not None:
        t = t[t.step <= max_step]
    t = t.sort_values(list(KEY))
    if how == "baseline":
        return t[t.step == 0]
    if isinstance(how, (int, np.integer)):
        return t[t.step == how]
    column = "iou" if how == "oracle" else f"score_{how}"
    if column not in t:
        raise ValueError(f"the table has no column {column!r}; selectors in it: {selectors_in(table)}")
    return t.loc[t.groupby(list(TRAJECTORY), sort=False)[column].idxmax()]  # idxmax: first of ties


def selectors_in(table: pd.DataFrame) -> list:
    return [c[len("score_"):] for c in table.columns if c.startswith("score_")]


def metrics(picked: pd.DataFrame) -> dict:
    """Every metric of :data:`METRICS` (in %) of one set of picked candidates, and its episode count."""
    acc = IoUAccumulator()
    for counts, class_name in zip(picked[list(COUNTS)].to_numpy(dtype=np.int64), picked["class"]):
        acc.add_counts(counts, class_name)
    summary = acc.summary()
    return {"miou": summary["miou"], "mean_iou": 100.0 * float(picked.iou.mean()) if len(picked) else math.nan,
            "episode_fb_miou": summary["episode_fb_miou"], "fb_iou": summary["fb_iou"], "episodes": acc.episodes}


def _grouped(picked: pd.DataFrame, by, **labels) -> list:
    return [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **labels, **metrics(group)}
            for key, group in picked.groupby(list(by), sort=True)]


def step_metrics(table: pd.DataFrame, by=SETTING + ("seed",)) -> pd.DataFrame:
    """Metrics of the candidate at each fixed step, per ``by`` group and step (the eta-sensitivity curves)."""
    steps = sorted(ok(table).step.unique())
    return pd.DataFrame([r for s in steps for r in _grouped(picks(table, int(s)), by, step=int(s))])


def bto(table: pd.DataFrame, selectors=None, max_step: int | None = None, by=SETTING + ("seed",)) -> pd.DataFrame:
    """B, T per selector and O, per ``by`` group, long format: columns ``variant`` (B / T / O), ``selector``."""
    selectors = selectors_in(table) if selectors is None else list(selectors)
    rows = _grouped(picks(table, "baseline", max_step), by, variant="B", selector="")
    for name in selectors:
        rows += _grouped(picks(table, name, max_step), by, variant="T", selector=name)
    rows += _grouped(picks(table, "oracle", max_step), by, variant="O", selector="")
    return pd.DataFrame(rows)


def over_seeds(frame: pd.DataFrame, by, values=("miou", "mean_iou", "episode_fb_miou", "fb_iou")) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1; 0 for one seed) and count of ``values`` over seeds."""
    groups = frame.groupby(list(by), sort=False)
    out = groups[list(values)].mean()
    spread = groups[list(values)].std(ddof=1).fillna(0.0).add_suffix("_sd")
    out = out.join(spread).join(groups.size().rename("seeds")).join(groups["episodes"].sum())
    return out.reset_index()


def bto_wide(summary: pd.DataFrame, metric: str = "miou", by=SETTING) -> pd.DataFrame:
    """B, one T column per selector, O and O - T gaps, from :func:`over_seeds` of :func:`bto`."""
    label = summary.variant + summary.selector.map(lambda s: f" {s}" if s else "")
    wide = summary.assign(label=label).pivot_table(index=list(by), columns="label", values=metric, sort=False)
    for column in [c for c in wide.columns if c.startswith("T ")]:
        wide[f"T-B {column[2:]}"] = wide[column] - wide["B"]
        wide[f"O-T {column[2:]}"] = wide["O"] - wide[column]
    wide.columns.name = None
    return wide.reset_index()


def per_episode(table: pd.DataFrame, selectors=None, max_step: int | None = None) -> pd.DataFrame:
    """One row per trajectory: IoU of B, of each selector's T and of O, with the steps chosen."""
    selectors = selectors_in(table) if selectors is None else list(selectors)
    keys = list(TRAJECTORY)
    out = picks(table, "baseline", max_step)[keys + ["class", "iou"]].rename(columns={"iou": "iou_B"})
    for name, label in [(s, f"T {s}") for s in selectors] + [("oracle", "O")]:
        chosen = picks(table, name, max_step)[keys + ["iou", "step"]]
        out = out.merge(chosen.rename(columns={"iou": f"iou_{label}", "step": f"step_{label}"}), on=keys)
    return out.reset_index(drop=True)


def optimal_steps(table: pd.DataFrame) -> pd.DataFrame:
    """Per trajectory: the oracle step (earliest best), the best IoU, how many steps tie for it,
    and ``flat`` (every candidate scores the same IoU, so "the optimal step" is not defined)."""
    t = ok(table).sort_values(list(KEY))
    groups = t.groupby(list(TRAJECTORY), sort=False)
    first_best = t.loc[groups.iou.idxmax()].set_index(list(TRAJECTORY))
    out = pd.DataFrame({"oracle_step": first_best.step, "best_iou": first_best.iou})
    out["worst_iou"] = groups.iou.min()
    out["ties"] = t.assign(best=t.iou == groups.iou.transform("max")).groupby(list(TRAJECTORY), sort=False).best.sum()
    out["flat"] = out.best_iou - out.worst_iou <= 1e-12
    return out.reset_index()


def optimal_step_stats(steps: pd.DataFrame) -> dict:
    """Mean and std (ddof=1) of the oracle step, over all trajectories and over the non-flat ones."""
    moving = steps[~steps.flat]

    def stats(s):
        return (float(s.mean()) if len(s) else math.nan, float(s.std(ddof=1)) if len(s) > 1 else math.nan)

    mean, std = stats(steps.oracle_step)
    moving_mean, moving_std = stats(moving.oracle_step)
    return {"mean": mean, "std": std, "trajectories": int(len(steps)), "flat_fraction": float(steps.flat.mean()),
            "moving_mean": moving_mean, "moving_std": moving_std, "moving_trajectories": int(len(moving))}


def paired_interval(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of a - b over paired samples with a bootstrap percentile interval."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0:
        raise ValueError("paired_interval needs at least one pair")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(diff.mean()), "low": float(lo), "high": float(hi), "n": int(diff.size), "level": level}


def direction(interval: dict) -> str:
    """Where a lies w.r.t. b by the interval of a - b: ``"above"``, ``"below"`` or ``"indistinguishable from"``."""
    if interval["low"] > 0:
        return "above"
    if interval["high"] < 0:
        return "below"
    return "indistinguishable from"


def selector_misses(table: pd.DataFrame, selector: str, k: int = 4) -> pd.DataFrame:
    """The ``k`` trajectories where ``selector``'s pick falls furthest below the oracle's IoU."""
    wide = per_episode(table, [selector])
    wide["gap"] = wide["iou_O"] - wide[f"iou_T {selector}"]
    return wide[wide.gap > 0].sort_values("gap", ascending=False).head(k).reset_index(drop=True)


def candidate_rows(table: pd.DataFrame, trajectory: dict) -> pd.DataFrame:
    """The rows (one per step) of the trajectory keyed by ``trajectory`` (a dict over TRAJECTORY)."""
    mask = np.ones(len(table), dtype=bool)
    for key in TRAJECTORY:
        mask &= (table[key] == trajectory[key]).to_numpy()
    return table[mask].sort_values("step")


def step_norms(table: pd.DataFrame, by=SETTING) -> pd.DataFrame:
    """Mean drift and noise norms, and d_phi, per group and step (steps that moved the embedding)."""
    moved = ok(table).dropna(subset=["drift_norm"])
    return moved.groupby(list(by) + ["step"])[["drift_norm", "noise_norm", "d_phi"]].mean().reset_index()


def regimes(table: pd.DataFrame) -> pd.Series:
    """Which terms of the flow moved the embedding: both, drift only (gamma = 0), noise only, neither."""
    noise = table.gamma > 0
    names = np.select([table.drift & noise, table.drift & ~noise, ~table.drift & noise],
                      ["both", "drift only", "noise only"], default="neither")
    return pd.Series(names, index=table.index, name="regime")


def curve_shape(values, tol: float) -> dict:
    """How a metric moves over steps: best step, rise to it, fall after it, net change, and a word
    (``flat``, ``rises then falls``, ``rises``, ``falls`` or ``non-monotonic``; changes <= ``tol`` count as none)."""
    v = np.asarray(values, dtype=float)
    best = int(np.argmax(v))
    out = {"best_step": best, "rise": float(v[best] - v[0]), "fall": float(v[best] - v[-1]),
           "net": float(v[-1] - v[0]), "range": float(v.max() - v.min())}
    if out["range"] <= tol:
        shape = "flat"
    elif 0 < best < len(v) - 1 and out["rise"] > tol and out["fall"] > tol:
        shape = "rises then falls"
    elif out["net"] > tol:
        shape = "rises"
    elif out["net"] < -tol:
        shape = "falls"
    else:
        shape = "non-monotonic"
    return {**out, "shape": shape}


def miss_cases(lab: "Lab", table: pd.DataFrame, selector: str, k: int, n_episodes: int) -> list:
    """The ``k`` worst selector misses as panels for :func:`prmagic_core.viz.misses_figure` (masks from the table)."""
    cases = []
    for miss in selector_misses(table, selector, k).to_dict("records"):
        rows = candidate_rows(table, miss).set_index("step")
        episode = lab.episode_by_id(miss["episode"], n_episodes)
        picks_ = {"B": 0, f"T {selector}": int(miss[f"step_T {selector}"]), "O": int(miss["step_O"])}
        cases.append({
            "image": episode.query_image, "truth": episode.query_mask,
            "masks": {label: text_to_mask(rows.loc[t, "mask"]) for label, t in picks_.items()},
            "prompts": {label: prompts_array(rows.loc[t, "prompts"]) for label, t in picks_.items()},
            "titles": {label: f"step {t}, IoU {rows.loc[t, 'iou']:.3f}" for label, t in picks_.items()},
            "title": f"{miss['class']} ({miss['baseline']}, eta {miss['eta']:g}, seed {miss['seed']})",
        })
    return cases


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f", formats: dict | None = None) -> str:
    """A GitHub-style markdown table of ``frame``: floats formatted with ``floatfmt``, or with
    ``formats[column]`` for the columns it names."""
    formats = formats or {}

    def cell(value, column):
        if isinstance(value, (float, np.floating)):
            return format(value, formats.get(column, floatfmt))
        return str(value)

    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, columns)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------- theory: scales and a 2-D toy

def noise_vs_drift(etas, gamma: float = 0.1, clip: float = 0.1) -> pd.DataFrame:
    """Per element and step: the noise std sqrt(2 eta gamma) vs the largest drift eta * clip."""
    rows = []
    for eta in etas:
        noise = math.sqrt(2 * eta * gamma)
        rows.append({"eta": eta, "gamma": gamma, "clip": clip, "noise_std": noise, "max_drift": eta * clip,
                     "ratio": noise / (eta * clip) if eta > 0 else math.inf})
    return pd.DataFrame(rows)


@dataclass
class ToyFlow:
    """Particles moved by a trained 2-D discriminator's gradient flow."""

    real: np.ndarray  # (n, 2)
    snapshots: dict  # step -> (n, 2)
    distance: np.ndarray  # energy distance to ``real`` after each step (index 0: before any)
    grid: tuple  # (xs, ys, d on the grid) for contour plots
    losses: list
    config: dict = field(default_factory=dict)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (0 iff the distributions agree)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def toy_discriminator(seed: int = 0) -> torch.nn.Module:
    """A small MLP d(x): the logit of "x is real" for 2-D points."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                               torch.nn.Linear(64, 1))


def train_discriminator(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, steps: int) -> list:
    """``steps`` Adam steps of logistic loss, real labelled 1 and fake 0; returns the losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = torch.cat([real, fake.detach()])
    labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs)[:, 0], labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def toy_flow(flow: FlowConfig, steps: int, n: int = 400, train_steps: int = 300, seed: int = 0,
             retrain_every: int | None = None, retrain_steps: int = 30, real_mean=(2.0, 1.5), real_std: float = 0.5,
             fake_mean=(-2.0, -1.0), fake_std: float = 1.0, record=None) -> ToyFlow:
    """Fake particles moved toward a real 2-D Gaussian by :func:`flow_step` on a trained discriminator.

    As the paper's equation reads (gradient at the moved point): x_t = x_0 + delta_t, and
    delta_{t+1} = delta_t + eta s(d) clip(grad d(x_t)) + sqrt(2 eta gamma) xi. The discriminator
    is trained once against the initial particles (PR-MaGIC's decoder is never retrained either),
    or, with ``retrain_every``, further trained against the current particles every so many steps,
    so that d keeps estimating log(mu / rho_t).
    """
    g = torch.Generator().manual_seed(seed)
    real = torch.tensor(real_mean) + real_std * torch.randn(n, 2, generator=g)
    x0 = torch.tensor(fake_mean) + fake_std * torch.randn(n, 2, generator=g)
    model = toy_discriminator(seed)
    losses = train_discriminator(model, real, x0, train_steps)
    record = sorted(set(record or (0, steps // 4, steps // 2, steps)))
    delta = torch.zeros_like(x0)
    snapshots, distance = {0: x0.numpy().copy()}, [energy_distance(x0, real)]
    for t in range(1, steps + 1):
        if retrain_every and t > 1 and (t - 1) % retrain_every == 0:
            losses += train_discriminator(model, real, x0 + delta, retrain_steps)
        x = (x0 + delta).requires_grad_(True)
        with torch.enable_grad():
            d = model(x)[:, 0]
            (grad,) = torch.autograd.grad(d.sum(), x)  # each particle's own gradient
        delta, _ = flow_step(delta, grad, float(d.detach().mean()), flow, g)
        moved = (x0 + delta).detach()
        distance.append(energy_distance(moved, real))
        if t in record:
            snapshots[t] = moved.numpy().copy()
    points = np.concatenate([real.numpy(), *snapshots.values()])
    lo, hi = float(points.min()) - 1.0, float(points.max()) + 1.0
    xs = np.linspace(lo, hi, 81)
    grid = torch.tensor(np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2), dtype=torch.float32)
    with torch.no_grad():
        field_d = model(grid)[:, 0].reshape(len(xs), len(xs)).numpy()
    config = {**flow.as_dict(), "steps": steps, "n": n, "train_steps": train_steps, "seed": seed,
              "retrain_every": retrain_every, "retrain_steps": retrain_steps}
    return ToyFlow(real.numpy(), snapshots, np.array(distance), (xs, xs, field_d), losses, config)


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
