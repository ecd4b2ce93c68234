"""What every benchmark loader shares: the error type, episode plans and the lazy episode list.

A loader first *plans* its episodes (which class, which query, which supports) from the
annotation files alone, drawing from one ``numpy.random.default_rng(seed)``; images are read
only when an episode is asked for. Choices that need an image's own annotations (which object
instance a part episode uses) are drawn at load time from ``default_rng([seed, index])``, so an
episode comes out the same whatever order, or however often, episodes are read.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from ...errors import UserError
from ..episode import Episode


class BenchmarkError(UserError):
    """A benchmark tree lacks something or holds an unreadable file; the message names the path."""


@dataclass(frozen=True)
class EpisodePlan:
    """One episode decided up front: its class and the keys a loader turns into images and masks.

    ``query`` and ``supports`` are whatever the benchmark needs to find an image and its mask
    (a path, an image name, an annotation record); ``query_name`` is a short readable name of the
    query, part of the episode id.
    """

    class_name: str
    class_key: object
    query: object
    supports: tuple
    query_name: str


class EpisodeArrays(NamedTuple):
    support_images: list
    support_masks: list
    query_image: np.ndarray
    query_mask: np.ndarray


LoadEpisode = Callable[[EpisodePlan, np.random.Generator], EpisodeArrays]


class Plan(NamedTuple):
    episodes: list
    classes: tuple
    load: LoadEpisode


@dataclass(frozen=True)
class Benchmark:
    """A registry entry: how to plan a fold's episodes and what the root must look like."""

    title: str
    kind: str
    num_folds: int
    layout: str
    plan_episodes: Callable[..., Plan]


def draw_query_and_supports(rng: np.random.Generator, candidates: Sequence, shots: int) -> tuple:
    """A query and ``shots`` distinct supports, none equal to the query, from distinct candidates."""
    query_index = int(rng.integers(len(candidates)))
    return candidates[query_index], draw_supports(rng, candidates, query_index, shots)


def draw_supports(rng: np.random.Generator, candidates: Sequence, query_index: int, shots: int) -> tuple:
    """``shots`` distinct candidates other than the one at ``query_index``."""
    # Drawing among the n - 1 other positions and stepping over the query's keeps it O(shots).
    picks = rng.choice(len(candidates) - 1, size=shots, replace=False)
    return tuple(candidates[int(p) + (p >= query_index)] for p in picks)


def read_pairs(read_pair: Callable, plan: EpisodePlan) -> EpisodeArrays:
    """The episode's arrays, with ``read_pair(key) -> (image, mask)`` applied to the query, then the supports."""
    query_image, query_mask = read_pair(plan.query)
    supports = [read_pair(key) for key in plan.supports]
    return EpisodeArrays([image for image, _ in supports], [mask for _, mask in supports], query_image, query_mask)


def unique(items) -> list:
    """Items in first-seen order without repeats, so that distinct supports are distinct images."""
    return list(dict.fromkeys(items))


class BenchmarkEpisodes(Sequence):
    """A fold's episodes in protocol order; an episode's images are read when it is indexed."""

    def __init__(self, benchmark: str, kind: str, plan: Plan, *, fold: int, shots: int, seed: int, size):
        self.benchmark = benchmark
        self.kind = kind
        self.fold, self.shots, self.seed, self.size = fold, shots, seed, size
        self.classes = tuple(plan.classes)
        self._plans = list(plan.episodes)
        self._load = plan.load
        prefix = f"{benchmark}-fold{fold}-{shots}shot-seed{seed}"
        self.episode_ids = tuple(f"{prefix}-{i:05d}-{p.query_name}" for i, p in enumerate(self._plans))

    def __len__(self) -> int:
        return len(self._plans)

    def __getitem__(self, index: int) -> Episode:
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode {index} out of range for {len(self)} episodes")
        index %= len(self)
        plan, episode_id = self._plans[index], self.episode_ids[index]
        arrays = self._load(plan, np.random.default_rng([self.seed, index]))
        try:
            episode = Episode(
                tuple(arrays.support_images),
                tuple(arrays.support_masks),
                arrays.query_image,
                arrays.query_mask,
                plan.class_name,
                kind=self.kind,
                name=episode_id,
            )
            return episode if self.size is None else resize_episode(episode, self.size)
        except ValueError as error:
            raise BenchmarkError(f"episode {episode_id}: {error}") from None


def resize_episode(episode: Episode, size: int = 518) -> Episode:
    """The episode at ``size`` x ``size``, Matcher's evaluation resolution: images bilinear, masks nearest."""
    query_mask = None if episode.query_mask is None else _resize_mask(episode.query_mask, size)
    return dataclasses.replace(
        episode,
        support_images=tuple(_resize_image(image, size) for image in episode.support_images),
        support_masks=tuple(_resize_mask(mask, size) for mask in episode.support_masks),
        query_image=_resize_image(episode.query_image, size),
        query_mask=query_mask,
    )


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    # Pillow's bilinear is what torchvision's Resize runs on PIL images, as in Matcher.
    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    # Source index floor(i * in / out), as torch's "nearest" that Matcher resizes masks with.
    rows = np.arange(size) * mask.shape[0] // size
    cols = np.arange(size) * mask.shape[1] // size
    return mask[np.ix_(rows, cols)]
