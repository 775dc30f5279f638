"""nst-watch: a hot-folder darkroom for neural style transfer."""

__version__ = "0.1.0"
