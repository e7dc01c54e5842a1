"""Merging packet streams by timestamp: the live k-way merge and ``pcapd merge`` of files.

- :mod:`pcapd.merge.core` (re-exported here): the pure, sans-I/O merge of live sources with
  watermarks and lateness, shared by the api and ``pcapd merge``.
- :mod:`pcapd.merge.files`: ``pcapd merge``, files in, one pcapng out (synchronous file I/O),
  writing through :mod:`pcapd.merge.output`.

Importing this package loads only the pure core (no Trio, no I/O).
"""

from pcapd.merge.core import Merge, MergeStatistics, Release

__all__ = ["Merge", "MergeStatistics", "Release"]
