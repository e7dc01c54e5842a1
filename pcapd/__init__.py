"""pcapd: tcpdump for everyone on Cloud Foundry and BOSH."""

__version__ = "0.1.0"
