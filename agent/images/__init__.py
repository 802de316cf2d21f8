"""agent/images: the agent's image cache (``cache``) and the pull pipeline under it (``pull``)."""

from agent.images.cache import CachedImage, Fetch, ImageCache, ImageNotCached
from agent.images.pull import PullPipeline, hash_cached

__all__ = ["CachedImage", "Fetch", "ImageCache", "ImageNotCached", "PullPipeline", "hash_cached"]
