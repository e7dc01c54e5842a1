"""The agent role: captures with libpcap on its VM or inside a container's network namespace.

:mod:`.capture` is the engine (libpcap through cypcap, driven from Trio); :mod:`.netns` decides
which namespaces may be entered and enters them in a worker thread; :mod:`.pkthdr` reads
nanosecond timestamps that cypcap itself gets wrong.
"""
