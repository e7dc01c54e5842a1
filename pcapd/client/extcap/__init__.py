"""Wireshark's extcap interface: pcapd's capture targets as interfaces in Wireshark's capture list.

Theory of operation. Wireshark runs every executable in its extcap folders, each call a separate
process, and talks to it with command-line flags and lines on stdout:

- ``--extcap-interfaces [--extcap-version=X.Y]``: an ``extcap`` line, one ``interface`` line per
  target (``pcapd-cf``, ``pcapd-bosh``, ``pcapd-local``);
- ``--extcap-dlts --extcap-interface I``: the link type (Ethernet: pcapng carries each
  source's own link type in its interface block anyway);
- ``--extcap-config --extcap-interface I``: one ``arg`` line per option of the capture dialog;
- ``--extcap-interface I --extcap-capture-filter F`` (no ``--capture``): is F valid? Nothing on
  stdout means yes, otherwise the first line says why not;
- ``--capture --extcap-interface I --fifo PATH [--extcap-capture-filter F] [--OPTION VALUE]...``:
  the capture. It becomes exactly ``pcapd capture TARGET ... -w PATH``: the same code path,
  writing pcapng into the fifo Wireshark reads.

Wireshark stops a capture with SIGTERM (SIGKILL 30 s later) and closes the fifo; the client
ends gracefully on either (its signal handler, or the broken pipe). Wireshark shows anything an
extcap writes on stderr as "Error by extcap pipe", even after a clean run, so during a capture
stderr stays quiet: progress goes to ``--log-file`` if given, and only a failure is shown.

Two modules: :mod:`~pcapd.client.extcap.protocol` is pure (the definitions, the sentences, and
the translation of an extcap call into a ``pcapd capture`` command line; ``pcapd.cli`` builds
its parser from it without Trio), and :mod:`~pcapd.client.extcap.answer` answers and captures.
"""
