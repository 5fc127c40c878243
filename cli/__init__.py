"""zsteer.cli: the `zsteer` command line, on top of the library (``zsteer.jobs``, ``zsteer.demo``, ...).

- ``main``: the click group, its error handling and ``sample``; the other commands load lazily;
- ``edit``: ``zsteer edit``; ``tools``: ``zsteer sheet``, ``zsteer demo`` and ``zsteer export``;
- ``paths``: checks shared by the commands (a leaf: it imports no command);
- ``malloc``: the glibc allocator settings the long commands re-execute themselves with.

Nothing in the library imports this package.
"""
