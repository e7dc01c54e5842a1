"""Agent and api configuration (SPEC §8): frozen, validated objects from YAML.

``parse_*`` are pure (text or mapping in, object or :class:`~pcapd.errors.ConfigError` with every
problem out); ``load_*`` read the file first; :mod:`pcapd.config.files` checks the files a config
names (certificates, keys, directories), which only ``--check`` and start-up need.
"""

from pcapd.config.files import (
    CheckResult,
    check_agent_config_file,
    check_api_config_file,
    check_files,
)
from pcapd.config.model import (
    DEFAULT_AGENT_PORT,
    DEFAULT_AGENT_SERVER_NAME,
    AgentBufferConfig,
    AgentConfig,
    AgentLimitsConfig,
    AgentListenConfig,
    AgentsConfig,
    AgentsTlsConfig,
    AgentTlsConfig,
    ApiBufferConfig,
    ApiConfig,
    ApiLimitsConfig,
    ApiListenConfig,
    BoshConfig,
    BufferConfig,
    CfConfig,
    ContainersConfig,
    LocalStorageConfig,
    LogConfig,
    MergeConfig,
    S3StorageConfig,
    Secret,
    ServerTlsConfig,
    StorageConfig,
)
from pcapd.config.parse import (
    load_agent_config,
    load_api_config,
    local_api_config,
    parse_agent_config,
    parse_api_config,
)

__all__ = [
    "DEFAULT_AGENT_PORT",
    "DEFAULT_AGENT_SERVER_NAME",
    "AgentBufferConfig",
    "AgentConfig",
    "AgentLimitsConfig",
    "AgentListenConfig",
    "AgentTlsConfig",
    "AgentsConfig",
    "AgentsTlsConfig",
    "ApiBufferConfig",
    "ApiConfig",
    "ApiLimitsConfig",
    "ApiListenConfig",
    "BoshConfig",
    "BufferConfig",
    "CfConfig",
    "CheckResult",
    "ContainersConfig",
    "LocalStorageConfig",
    "LogConfig",
    "MergeConfig",
    "S3StorageConfig",
    "Secret",
    "ServerTlsConfig",
    "StorageConfig",
    "check_agent_config_file",
    "check_api_config_file",
    "check_files",
    "load_agent_config",
    "load_api_config",
    "local_api_config",
    "parse_agent_config",
    "parse_api_config",
]
