"""The cloud ⇄ edge wire contract (types and version). No I/O; imports nothing of ours.

The telemetry, enrollment and update messages arrive with the issues that build them;
docs/protocol.md is the source of truth for their shape.
"""

PROTOCOL_VERSION = 1
