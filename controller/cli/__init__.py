"""The ``gu`` command line: click commands over the hub's API client.

``controller.cli.main`` holds the group and the entry point; each concern has
its own module (apply/diff, gitops watch, objects, admin, hub). Rendering is in
``output``, exit codes and error messages in ``errors``.
"""
