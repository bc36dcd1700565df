"""The node runtime: the pure core made durable and served, composed of parts (see
:mod:`node.runtime.node`)."""

from node.runtime.committer import GroupCommitter, PostCommitHook
from node.runtime.config import NodeConfig, NodeState, default_data_dir
from node.runtime.node import LocalNode

__all__ = ["GroupCommitter", "LocalNode", "NodeConfig", "NodeState", "PostCommitHook", "default_data_dir"]
