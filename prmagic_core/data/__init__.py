"""Episodes: the ShapeWorld generator and the folder format."""
from .episode import Episode

__all__ = ["Episode"]
