"""The edge agent: field drivers, polling, durable buffer, outbound-only uplink, updater.

It imports only ``fieldlink.protocol`` and ``fieldlink.kit`` (checked by import-linter), never
Django: the agent runs on small plant computers where the cloud's dependencies do not belong.
"""
