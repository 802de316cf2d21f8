"""The Docker runtime: a ``docker save`` tarball run as one container per placement.

``runtimes.docker.tarball`` reads the image id (the config digest) out of a
verified tarball, legacy or OCI layout; ``runtimes.docker.driver`` is the
driver (``DockerRuntime``) on a real engine through the docker SDK. The SDK is
imported only when a driver talks to an engine, so the agent starts without
it where no Docker runs.
"""

from runtimes.docker.driver import CAP_ADD, DockerRuntime
from runtimes.docker.tarball import image_id

__all__ = ["CAP_ADD", "DockerRuntime", "image_id"]
