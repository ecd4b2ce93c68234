"""What every sweep notebook's first cell builds from its papermill parameters.

    figures, lab, baselines, settings = open_notebook(NOTEBOOK, backend=backend, ..., baselines=baselines,
                                                      n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)

``figures`` writes the notebook's PNG/PDF files (to ``out_dir``, resolved from the repository),
``lab`` computes or reads the result tables (in ``cache_dir``), ``baselines`` are those of the
asked ones this installation has (the others are named in a note), and ``settings`` is the record
the headline JSON starts from: the model, the data and every parameter passed after ``baselines``.
"""
from __future__ import annotations

from . import experiments as ex, viz
from .baselines import BASELINES
from .figures import notebook_dirs


def _matching_encoder(name, backend: str, dinov2_checkpoint, baselines) -> str | None:
    """The encoder the notebook's Matcher and GF-SAM match with, recorded by name (None without them)."""
    from .baselines.matcher.features import matching_encoder_name

    if not {"matcher", "gfsam"} & set(baselines):
        return None
    return matching_encoder_name(name, backend == "tiny", dinov2_checkpoint)


def open_notebook(notebook: str, *, backend: str, checkpoint, model_type: str, dinov2_checkpoint, dataset: str,
                  data_root, device: str, out_dir, cache_dir, image_size=None, fold=0, matching_encoder=None,
                  baselines=(), **recorded):
    out_dir, cache_dir = notebook_dirs(out_dir, cache_dir)  # absolute, whatever the working directory
    viz.use_style()
    figures = viz.FigureSet(out_dir, prefix=notebook[:2])
    setup = ex.Setup(backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
                     dataset=dataset, data_root=data_root, device=device, image_size=image_size, fold=fold,
                     matching_encoder=matching_encoder)
    lab = ex.Lab(setup, cache_dir)
    available = [b for b in baselines if b in BASELINES]
    skipped = [b for b in baselines if b not in BASELINES]
    if skipped:
        from IPython.display import Markdown, display

        display(Markdown(f"Not available in this installation, so left out: {', '.join(skipped)}."))
    settings = dict(backend=backend, checkpoint=checkpoint, model_type=setup.sam_type, dataset=dataset, kind=lab.kind,
                    image_size=lab.image_size if dataset == "shapeworld" else None, fold=fold, baselines=available,
                    matching_encoder=_matching_encoder(matching_encoder, backend, dinov2_checkpoint, available),
                    device=lab.device.type, **recorded)
    return figures, lab, available, settings
